"""Placement plans: which weights live on the GPU, in which precision, and what is streamed or kept in CPU RAM, chosen
from the GPU memory that is free (and the host RAM) once the checkpoints are loaded.

The candidates, fastest first; `choose_plan` takes the first that fits:

- `gpu`: everything resident, as on a big card (the fast path quantises to fp8 on the GPU afterwards).
- `gpu-fp8`: both transformers resident in fp8, quantised block by block on the way to the GPU (~48 GB cards).
- `swap`: one transformer resident (fp8 where it runs), the other warm in pinned CPU RAM and copied in when a request
  asks for it (seconds, never a disk read); the text encoder resident in bf16, else in fp8 (as Krea's own fp8
  inference runs it), else streamed layer by layer while a prompt is encoded; the VAE resident, tiled above
  1024² (~24 GB cards).
- `swap+stream N`: the same with N of the active transformer's blocks streamed from pinned CPU RAM at every step
  (~16 and 12 GB cards: N follows from the free memory).
- `offload`: today's fallback, every module streamed layer by layer in bf16.
- `cpu`: no GPU.

Every number here is an estimate from the modules' parameter counts plus a headroom for activations; the GPU
benchmark (`bench/small_gpu_benchmark.py`) measures what each plan really needs and takes. The placement setting
still forces `gpu`, `offload` or `cpu`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .placement import PLACEMENTS

if TYPE_CHECKING:
    from collections.abc import Sequence

GiB = 1024**3
# Activations, the VAE decode at 2048² and the CUDA context beside fully resident weights (as `placement.py`).
RESIDENT_HEADROOM = 12 * GiB
# Both transformers resident in fp8 (~48 GB cards): 2048² steps (~4 GB of activations) beside them, the VAE tiled
# above 1024².
FP8_RESIDENT_HEADROOM = 6 * GiB
# A small card serves up to ~1024² untiled: one step's activations (~1 GB at 1024² in fp8), the single-frame decode
# (~1.3 GB at 1024²), cuBLAS and compile workspaces. To be checked by the benchmark.
SMALL_CARD_HEADROOM = 3 * GiB
STREAM_BUFFERS = 2  # streamed blocks on the GPU at once: the one running and the one arriving
VAE_TILE = 1024  # small plans decode images larger than this (pixels per side) in overlapping tiles
VAE_TILE_STRIDE = 896
HOST_MARGIN = 4 * GiB  # host RAM left to the OS and Python when deciding to pin

TEXT_ENCODER_MODES = ("gpu", "gpu-fp8", "streamed")


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of the parts of the loaded pipelines, in bf16 and as the fast path's fp8 would hold them."""

    num_transformers: int
    num_blocks: int
    block_bf16: int  # one repeated block
    block_fp8: int
    transformer_rest_bf16: int  # embeddings, text fusion, final layer: never quantised
    text_encoder_bf16: int
    text_encoder_fp8: int
    vae: int

    def transformer(self, fp8: bool) -> int:
        return self.transformer_rest_bf16 + self.num_blocks * (self.block_fp8 if fp8 else self.block_bf16)

    def text_encoder(self, mode: str) -> int:
        return {"gpu": self.text_encoder_bf16, "gpu-fp8": self.text_encoder_fp8, "streamed": 0}[mode]

    @classmethod
    def of(cls, pipes: Sequence) -> ModelSizes:
        """Measured on the loaded pipelines (which share their text encoder and VAE)."""
        transformers = list({id(p.transformer): p.transformer for p in pipes}.values())
        first = transformers[0]
        blocks = list(first.transformer_blocks)
        block_ids = {id(param) for block in blocks for param in block.parameters()}
        rest = [param for param in first.parameters() if id(param) not in block_ids]
        encoder = pipes[0].text_encoder
        return cls(
            num_transformers=len(transformers),
            num_blocks=len(blocks),
            block_bf16=module_bytes(blocks[0], fp8=False),
            block_fp8=module_bytes(blocks[0], fp8=True),
            transformer_rest_bf16=sum(_bf16_bytes(param) for param in rest),
            text_encoder_bf16=module_bytes(encoder, fp8=False),
            text_encoder_fp8=module_bytes(encoder, fp8=True),
            vae=module_bytes(pipes[0].vae, fp8=False),
        )


def module_bytes(module: nn.Module, fp8: bool) -> int:
    """A module's weights in bf16 (fp32 ones stay fp32), or with its Linear weights in fp8 plus one fp32 scale per
    row. Counted from element counts, so a module quantised already counts the same."""
    total = 0
    for submodule in module.modules():
        for name, param in submodule.named_parameters(recurse=False):
            if fp8 and isinstance(submodule, nn.Linear) and name == "weight" and min(param.shape) >= 16:
                total += param.numel() + 4 * param.shape[0]
            else:
                total += _bf16_bytes(param)
    return total


def _bf16_bytes(param: torch.Tensor) -> int:
    return param.numel() * (4 if param.dtype == torch.float32 and param.dim() <= 1 else 2)


@dataclass(frozen=True)
class MemoryBudget:
    """What there is to place the weights in: free GPU memory (None: no GPU) and available host RAM."""

    gpu_free: int | None
    host_available: int


def read_budget(device: torch.device) -> MemoryBudget:
    """This machine's: free GPU memory as the allocator may use it (a `set_per_process_memory_fraction` cap counts),
    and the host's available RAM."""
    host = _host_available()
    if device.type != "cuda":
        return MemoryBudget(None, host)
    # "cuda" without an index is the current device: mem_get_info takes it so, get_per_process_memory_fraction not
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    fraction = torch.cuda.get_per_process_memory_fraction(index)
    if fraction < 1.0:  # the cap counts what this process holds already
        free = min(free, int(fraction * total) - torch.cuda.memory_reserved(index))
    return MemoryBudget(free, host)


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os_total_memory()


def os_total_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class PlacementPlan:
    """Where every weight lives. `name` is what the history records (16 characters at most)."""

    name: str
    fp8: bool = False  # the transformers' blocks in fp8 (quantised on the way to the GPU where they are not yet)
    swap: bool = False  # one transformer's resident part on the GPU at a time, the others in CPU RAM
    streamed_blocks: int = 0  # of each transformer's blocks, streamed from CPU RAM when they run
    text_encoder: str = "gpu"  # TEXT_ENCODER_MODES
    vae_tiling: bool = False
    pinned: bool = True  # CPU copies in page-locked memory (fast, asynchronous copies)
    images_at_once: int | None = None  # images per pipeline call; None: as `images_per_call` says for the plan
    gpu_bytes: int = 0  # estimated: weights on the GPU plus headroom
    host_bytes: int = 0  # estimated: weights kept in CPU RAM
    gpu_free: int | None = None  # what it was chosen for

    @property
    def placement(self) -> str:
        """The engine's coarse placement: `gpu` (resident when running), `offload` or `cpu`."""
        return self.name if self.name in ("offload", "cpu") else "gpu"

    @property
    def images_per_call(self) -> int:
        """Images per pipeline call (0: all a request asks for at once). The small-GPU plans' headroom holds one 1024²
        image: on a 24 GB cap Raw 1024², 2 images, ran out of memory (bench/NOTES.md, session g), so their batches run
        one at a time (`generation.in_parts`), whoever built the plan."""
        if self.images_at_once is not None:
            return self.images_at_once
        return 1 if self.swap or self.streamed_blocks else 0

    @property
    def managed(self) -> bool:
        """Whether `residency.py` places the weights (the small-GPU plans), not `placement.apply_placement`."""
        return self.name not in ("gpu", "offload", "cpu")

    def streamed_indices(self, num_blocks: int) -> list[int]:
        """Which blocks stream: spread evenly, so each streamed block has resident ones around it."""
        count = min(self.streamed_blocks, num_blocks)
        return sorted({math.floor((i + 0.5) * num_blocks / count) for i in range(count)}) if count else []

    def describe(self, active: str | None = None, names: dict[str, str] | None = None) -> str:
        """One line for the status bar, e.g. `plan swap (23.6 GB free): Turbo transformer fp8 on the GPU, Raw warm in
        pinned CPU RAM, swapped in on demand; text encoder fp8 on the GPU; VAE on the GPU, tiled above 1024²`."""
        free = f" ({self.gpu_free / 1e9:.1f} GB free)" if self.gpu_free is not None else ""
        names = names or {}
        if not self.managed:
            what = {
                "gpu": "all weights on the GPU",
                "offload": "all weights in CPU RAM, streamed layer by layer (bf16)",
                "cpu": "all weights on the CPU",
            }[self.name]
            return f"plan {self.name}{free}: {what}"
        precision = "fp8" if self.fp8 else "bf16"
        if self.swap:
            current = names.get(active or "", "one transformer")
            others = [name for key, name in names.items() if key != active] or ["the other"]
            transformers = (
                f"{current} transformer {precision} on the GPU, {' and '.join(others)} warm in "
                f"{'pinned ' if self.pinned else ''}CPU RAM, swapped in on demand"
            )
        else:
            transformers = f"both transformers {precision} on the GPU"
        if self.streamed_blocks:
            transformers += f", {self.streamed_blocks} blocks of each streamed from CPU RAM"
        encoder = {
            "gpu": "text encoder on the GPU",
            "gpu-fp8": "text encoder fp8 on the GPU",
            "streamed": "text encoder streamed from CPU RAM when encoding",
        }[self.text_encoder]
        vae = "VAE on the GPU" + (f", tiled above {VAE_TILE}²" if self.vae_tiling else "")
        batches = {0: "", 1: "; images one at a time"}.get(self.images_per_call, f"; {self.images_per_call} at a time")
        return f"plan {self.name}{free}: {transformers}; {encoder}; {vae}{batches}"


CPU_PLAN = PlacementPlan("cpu")


def choose_plan(
    requested: str, budget: MemoryBudget, sizes: ModelSizes, *, fp8: bool, text_encoder_fp8: bool | None = None
) -> PlacementPlan:
    """The fastest plan that fits `budget`. `requested` is the placement setting: `auto` chooses; `gpu`, `offload`
    and `cpu` force today's plans. `fp8`: the fast path's fp8 can run here (plans then hold transformers in fp8);
    `text_encoder_fp8` (default: as `fp8`): the text encoder may be quantised too."""
    if requested not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if budget.gpu_free is None or requested == "cpu":
        return CPU_PLAN
    text_encoder_fp8 = fp8 if text_encoder_fp8 is None else text_encoder_fp8
    if requested in ("gpu", "offload"):
        return PlacementPlan(requested, gpu_free=budget.gpu_free)
    free = budget.gpu_free
    everything = sizes.num_transformers * sizes.transformer(False) + sizes.text_encoder_bf16 + sizes.vae
    if everything + RESIDENT_HEADROOM <= free:
        return PlacementPlan("gpu", gpu_bytes=everything + RESIDENT_HEADROOM, gpu_free=free)
    if fp8:
        both = sizes.num_transformers * sizes.transformer(True) + sizes.text_encoder_bf16 + sizes.vae
        if both + FP8_RESIDENT_HEADROOM <= free:
            needed = both + FP8_RESIDENT_HEADROOM
            return PlacementPlan("gpu-fp8", fp8=True, vae_tiling=True, gpu_bytes=needed, gpu_free=free)
    block = sizes.block_fp8 if fp8 else sizes.block_bf16
    encoders = ["gpu", *(["gpu-fp8"] if text_encoder_fp8 else []), "streamed"]
    # One transformer resident, then ever more of its blocks streamed; for each, the best text encoder that fits.
    for streamed in range(sizes.num_blocks + 1):
        for encoder in encoders:
            if streamed and encoder != "streamed":
                continue  # streaming blocks only pays once the text encoder is off the GPU
            resident = sizes.transformer(fp8) - streamed * block
            buffers = min(streamed, STREAM_BUFFERS) * block
            needed = resident + buffers + sizes.text_encoder(encoder) + sizes.vae + SMALL_CARD_HEADROOM
            if needed <= free:
                name = "swap" if not streamed else f"swap+stream {streamed}"
                # CPU RAM: every transformer's copy (swapping in never reads the disk) and a streamed text encoder.
                host = sizes.num_transformers * sizes.transformer(fp8)
                host += sizes.text_encoder_bf16 if encoder == "streamed" else 0
                return PlacementPlan(
                    name, fp8=fp8, swap=sizes.num_transformers > 1, streamed_blocks=streamed, text_encoder=encoder,
                    vae_tiling=True, pinned=host + HOST_MARGIN <= budget.host_available, gpu_bytes=needed,
                    host_bytes=host, gpu_free=free,
                )  # fmt: skip
    return PlacementPlan("offload", gpu_free=free)
