"""Carries out a small-GPU placement plan (`plans.py`) on the loaded pipelines, and swaps transformers on demand.

`place` runs once, as step 4 of `speedups.apply`:

- Each transformer block goes to the GPU, is fused and quantised to fp8 there (when the plan holds fp8; a block of a
  pre-quantised checkpoint already is), and comes back to CPU RAM, page-locked: bf16 weights never need to fit on the
  GPU all at once. A 28-block transformer passes through one block at a time.
- The plan's streamed blocks get diffusers' group offloading (`apply_group_offloading`, leaf level, with CUDA streams):
  their weights stay in CPU RAM and are copied in while they run, on both transformers, so they never need swapping.
- The text encoder is resident in bf16, resident in fp8 (quantised layer by layer on the GPU, as Krea's own fp8
  inference runs it), or streamed by group offloading while a prompt is encoded. The VAE is resident; with
  `vae_tiling` images larger than `plans.VAE_TILE` decode in overlapping tiles.
- The active transformer's resident part (everything but its streamed blocks) is copied to the GPU; every transformer
  keeps its page-locked CPU copy, so `activate` moves another one in with one host-to-device copy and drops the
  outgoing one's GPU copy for free: switching checkpoints never reads the disk.

Swapping moves weights, so whatever holds their addresses (the denoiser's CUDA graphs) is rebuilt by `on_swap`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .plans import VAE_TILE, VAE_TILE_STRIDE, PlacementPlan

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)


class Residency:
    """Where each weight of a managed plan lives, and which transformer is on the GPU now (`active`)."""

    def __init__(
        self,
        plan: PlacementPlan,
        transformers: dict[str, nn.Module],
        text_encoder: nn.Module,
        vae: nn.Module,
        device: torch.device,
        active: str,
        on_swap: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.transformers = transformers
        self.text_encoder = text_encoder
        self.vae = vae
        self.device = device
        self.active = active
        self.on_swap = on_swap  # called with the key of the transformer just moved in
        self.cpu_copies: dict[str, dict[str, torch.Tensor]] = {}  # key -> its resident part's CPU tensors
        self.swaps = 0
        self.last_swap_s = 0.0
        self.placed = False

    # ------------------------------------------------------------------------------------------------ placing
    def place(self, fp8: bool) -> None:
        """Put every weight where the plan says (once; a second call changes nothing)."""
        if self.placed:
            return
        start = time.perf_counter()
        for transformer in self.transformers.values():
            streamed = set(self.plan.streamed_indices(len(transformer.transformer_blocks)))
            for index, block in enumerate(transformer.transformer_blocks):
                if fp8:
                    self._quantise_on_device(block)
                if index in streamed:
                    # Group offloading pins copies of its own. Pinned here first, an fp8 weight (a torchao tensor)
                    # would be its own "copy" (pinning a pinned tensor returns it), and diffusers moves torchao
                    # weights to the GPU by swapping tensor contents: the copy went with it, and the next step's
                    # pinning failed on a GPU tensor ("cannot pin 'CUDAFloat8_e4m3fnType'", the 16 GB plan on an H200).
                    block.to("cpu")
                    self._stream(block)
                else:
                    self._to_cpu(block)
            for module in self._rest(transformer):
                self._to_cpu(module)
        for key, transformer in self.transformers.items():
            # Detached views of the (page-locked) CPU tensors: they stay on the CPU when the modules move.
            self.cpu_copies[key] = {name: tensor for name, tensor in transformer.state_dict().items()
                                    if name in self._resident_names(transformer)}  # fmt: skip
        self._place_text_encoder(fp8)
        self.vae.to(self.device)
        if self.plan.vae_tiling:
            self.vae.enable_tiling(
                tile_sample_min_height=VAE_TILE, tile_sample_min_width=VAE_TILE,
                tile_sample_stride_height=VAE_TILE_STRIDE, tile_sample_stride_width=VAE_TILE_STRIDE,
            )  # fmt: skip
        self._move_in(self.active)
        self.placed = True
        log.info("Placed for %s in %.1f s", self.plan.name, time.perf_counter() - start)

    def _quantise_on_device(self, block: nn.Module) -> None:
        from .speedups.fp8 import fp8_quantized_module, quantize_linears_fp8
        from .speedups.projections import fuse_block_projections

        if fp8_quantized_module(block):
            return
        block.to(self.device)
        fuse_block_projections(block)
        quantize_linears_fp8(block)

    def _to_cpu(self, module: nn.Module) -> None:
        module.to("cpu")
        if self.plan.pinned and torch.cuda.is_available():
            module._apply(_pinned)

    def _stream(self, module: nn.Module) -> None:
        """Diffusers' group offloading, leaf by leaf, copies overlapping compute on a CUDA stream where there is one."""
        from diffusers.hooks import apply_group_offloading

        cuda = self.device.type == "cuda"
        apply_group_offloading(
            module, onload_device=self.device, offload_type="leaf_level", use_stream=cuda, record_stream=cuda
        )

    def _place_text_encoder(self, fp8: bool) -> None:
        mode = self.plan.text_encoder
        if mode == "streamed":
            self.text_encoder.to("cpu")
            self._stream(self.text_encoder)
        elif mode == "gpu-fp8" and fp8:
            from .speedups.fp8 import quantize_linears_fp8

            for layer in _text_layers(self.text_encoder):  # one layer's bf16 weights on the GPU at a time
                layer.to(self.device)
                quantize_linears_fp8(layer)
            self.text_encoder.to(self.device)
        else:
            self.text_encoder.to(self.device)

    # ------------------------------------------------------------------------------------------------ swapping
    def activate(self, key: str) -> float:
        """Make `key`'s transformer the one on the GPU; returns the seconds the swap took (0 when it already was)."""
        if key == self.active or key not in self.transformers:
            return 0.0
        start = time.perf_counter()
        outgoing = self.transformers[self.active]
        # Back to its CPU copy: the GPU tensors are dropped, nothing is copied.
        outgoing.load_state_dict(self.cpu_copies[self.active], strict=False, assign=True)
        self._move_in(key)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.active = key
        self.swaps += 1
        self.last_swap_s = time.perf_counter() - start
        log.info("Swapped in %s in %.2f s (from CPU RAM)", key, self.last_swap_s)
        if self.on_swap is not None:
            self.on_swap(key)
        return self.last_swap_s

    def _move_in(self, key: str) -> None:
        transformer = self.transformers[key]
        for module in self._resident_modules(transformer):
            module.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------------------ parts
    def _streamed(self, transformer: nn.Module) -> set[int]:
        return set(self.plan.streamed_indices(len(transformer.transformer_blocks)))

    def _rest(self, transformer: nn.Module) -> list[nn.Module]:
        """Everything of a transformer but its blocks."""
        return [module for name, module in transformer.named_children() if name != "transformer_blocks"]

    def _resident_modules(self, transformer: nn.Module) -> list[nn.Module]:
        streamed = self._streamed(transformer)
        blocks = [block for index, block in enumerate(transformer.transformer_blocks) if index not in streamed]
        return [*self._rest(transformer), *blocks]

    def _resident_names(self, transformer: nn.Module) -> set[str]:
        streamed = tuple(f"transformer_blocks.{index}." for index in self._streamed(transformer))
        return {name for name in transformer.state_dict() if not (streamed and name.startswith(streamed))}


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy (asynchronous, faster host-to-device copies), or the tensor itself where pinning fails."""
    try:
        return tensor if tensor.is_pinned() else tensor.pin_memory()
    except RuntimeError as error:  # e.g. a tensor type without pinning support
        log.debug("Not pinned (%s): %s", type(tensor).__name__, error)
        return tensor


def _text_layers(text_encoder: nn.Module) -> Iterable[nn.Module]:
    language_model = getattr(text_encoder, "language_model", text_encoder)
    return list(getattr(language_model, "layers", []))
