"""Train the demo checkpoints: a miniature Krea 2 that draws what its prompt says, the way the real release was made.

    python -m demo.train --work artifacts/demo-train                 # every stage, on the GPU if there is one
    python -m demo.train --work artifacts/demo-train --stages vae raw # some stages (each resumes from the last)

Stages, each reading the previous stages' results from `--work`:
1. `vae`: the Qwen-Image VAE architecture (narrow) trained to reconstruct the scene generator's pictures; then the
   per-channel latent mean/std the pipeline normalises with, and the latent->RGB factors of the live preview.
2. `raw`: text encoder and transformer trained together by flow matching (the pipeline's resolution-dependent time
   shift, 10% caption dropout so classifier-free guidance works), at 256² and 512² (`--pool` and `--size-mix` also
   take other sizes, e.g. a cheaper 128² share of the steps), with an EMA of the weights;
   `--structure-loss W` adds `CaptionStructure`, a text-side objective standing in for the real encoder's pretraining;
   `--shape-map-loss W` adds `ShapeMaps`, which asks each image token which shape kind the clean picture shows there,
   and `--colour-map-loss W` which palette colour (so the background's too).
3. `turbo`: distilled from Raw: Raw's guided trajectories (6 Euler sub-steps per Turbo step, guidance 3.5) sampled at
   Turbo's 8-step schedule with its fixed shift (`mu=1.15`, `is_distilled`); the student, started from Raw, learns
   to make each step in one, without guidance. It shares Raw's text encoder and VAE.
4. `lora`: a style LoRA trained on Raw (the pixel mosaic the captions never name), for the app's LoRA tests.
5. `export`: the real repos' layouts in `--out` (Turbo: a whole diffusers pipeline; Raw: `transformer/` only), bf16,
   and the LoRA in `loras/`.

`import` is export's inverse: it fills `--work` from the checkpoints in `--out` (the committed ones by default), so a
fresh clone can train a LoRA on them or continue Raw (`--raw-round N`; `vae` and `turbo` always start afresh) without
the work folder of the session that trained them. It writes no training history: a later Raw round's report starts
there. Export to another folder, then copy what changed into demo/checkpoints:

    python -m demo.train --work artifacts/demo-train --stages import lora
    python -m demo.train --work artifacts/demo-train --stages export --out artifacts/demo-export

A from-scratch Raw (round 0) builds its transformer at `--transformer WIDTHxBLOCKS` (default 256x6, the committed
checkpoints' shape) and its text encoder at `--text-width N` (default 64); every later stage and round reads the
shapes from the weights' files (the transformer's metadata, the text encoder's embedding table).

Seeds are fixed; every stage has a step count (and a time cap that stops it early and says so, so one device call
cannot overrun). `demo/evaluate.py` then measures what the checkpoints draw.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from demo.scenes import (
    COLOURS,
    COUNT_WORDS,
    KINDS,
    LAYOUT_MIX,
    PLACES,
    PLURALS,
    RELATIONS,
    TEXTURES,
    Composition,
    Scene,
    colour_coverage,
    held_out_triples,
    kind_coverage,
    render,
    sample_scene,
)
from krea2.demo import (
    RAW_FOLDER,
    TEXT_HIDDEN,
    TEXT_LAYERS,
    TURBO_FOLDER,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
)
from krea2.loading import derive_prompt_template_lengths
from krea2.preview import LATENT_RGB_FILE
from krea2.speedups.vae_decode import swap_causal_convs

log = logging.getLogger("demo.train")

TEXT_TOKENS = 40  # the training captions' token window (the longest caption is about 20 tokens)
CAPTION_DROPOUT = 0.1
TEACHER_GUIDANCE = 3.5
TURBO_STEPS, TEACHER_SUBSTEPS = 8, 6
TURBO_MU = 1.15  # Krea2Pipeline's fixed shift for distilled checkpoints
# An EMA over the last ~200 steps. The 0.999 used before averaged over ~1000 steps, most of a 1300-2000-step round,
# so the saved weights lagged well behind the trained ones (and the next round started from them).
EMA_DECAY = 0.995


@dataclass
class Budget:
    vae_steps: int = 3000
    vae_batch: int = 64
    raw_steps: int = 9000
    raw_batch: int = 1024  # at 256²; a 512² batch holds a quarter as many pictures (the same number of tokens)
    raw_pool: dict[int, int] | None = None  # pictures drawn per size for the latent pool
    raw_size_mix: dict[int, float] | None = None  # Raw: share of the steps per picture size (None: `resolution`'s)
    layout_mix: dict[str, float] | None = None  # Raw's pool and Turbo's captions: share of each layout (LAYOUT_MIX)
    raw_round: int = 0  # 0: from scratch; 1, 2...: continue from the previous round's weights
    raw_lr: float = 1e-3
    turbo_trajectories: int = 12288
    turbo_steps: int = 3000
    turbo_batch: int = 1024
    minutes: dict[str, float] | None = None  # per-stage time caps
    compile: bool = False  # the transformer blocks through torch.compile (on a GPU)
    eager: tuple[str, ...] = ()  # stages that run without compile all the same (`--eager vae`: its cold compile)
    profile: bool = False  # profile a few steps of each stage, log where the time goes, and end the stage there
    stat_pictures: int = 1024  # pictures the latent statistics and preview factors are measured on
    round_trip_pictures: int = 256  # held-out pictures the VAE's round trip is scored on
    lora_steps: int = 1500
    lora_batch: int = 256
    lora_pool: int = 16384  # pixel-style pictures at 256²
    probe_every: int = 0  # Raw: score held-out prompts every this many steps (0: never); the learning curve
    transformer: tuple[int, int] = (256, 6)  # a from-scratch Raw's transformer: width, blocks (later rounds: theirs)
    text_width: int = TEXT_HIDDEN  # a from-scratch Raw's text encoder width (later rounds and stages: the weights')
    structure_weight: float = 0.0  # Raw: weight of the caption-structure objective on the text side (0: none)
    freeze_text_encoder: bool = False  # a later Raw round keeps the text encoder (a Turbo distilled on it stays valid)
    zero_init: bool = False  # a from-scratch Raw starts with its modulation and output projection at zero (adaLN-Zero)
    shape_map_weight: float = 0.0  # Raw: weight of the per-token shape-kind objective (`ShapeMaps`; 0: none)
    colour_map_weight: float = 0.0  # Raw: weight of `ShapeMaps`' per-token colour read-out (0: none)
    vae_recolour: float = 0.0  # VAE: share of its pictures in random colours (`recolour`; 0: the palette alone)


def compiles(budget: Budget, stage: str) -> bool:
    """Whether `stage` compiles: `--compile` (on by default on a GPU) unless `--eager` names the stage. Session m
    measured the VAE's compile on a cold machine at ~100 s of its 198 s stage; eager may finish sooner."""
    return budget.compile and stage not in budget.eager


def vocabulary() -> list[str]:
    """Every word a caption (or the pipeline's prompt template) uses: each becomes one token."""
    words = set(COLOURS) | set(KINDS) | set(PLURALS.values()) | set(TEXTURES) | set(COUNT_WORDS.values())
    for phrase in [*PLACES, *RELATIONS.values(), "a an on background small large system user assistant"]:
        words |= set(phrase.split())
    template = (
        "Describe the image by detailing the color shape size texture quantity text spatial relationships of the "
        "objects and background"
    )
    return sorted(words | set(template.lower().split()))


def rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 1) for key, value in seconds.items()}


def time_shift(mu: float, sigma: torch.Tensor) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's exponential shift (what the pipeline applies to its sigmas)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def raw_mu(image_tokens: int) -> float:
    """Krea2Pipeline's resolution-dependent shift for Raw (calculate_shift with the scheduler's defaults)."""
    slope = (1.15 - 0.5) / (6400 - 256)
    return image_tokens * slope + (0.5 - slope * 256)


def training_sigmas(
    image_tokens: int, count: int, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Raw's training noise levels for pictures of `image_tokens`: a logit-normal draw, shifted as the pipeline shifts
    its sigmas at that resolution."""
    return time_shift(raw_mu(image_tokens), torch.sigmoid(torch.randn(count, device=device, generator=generator)))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) -> (B, h/2 * w/2, 64), as Krea2Pipeline._pack_latents."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def bf16(device: torch.device) -> torch.autocast:
    """Mixed precision for every forward pass of training: bf16 on a GPU, full precision on the CPU (a smoke run)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def image_positions(text_len: int, grid: int, device) -> torch.Tensor:
    from diffusers import Krea2Pipeline

    return Krea2Pipeline.prepare_position_ids(text_len, grid, grid, device)


class Ema:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.targets = list(self.model.parameters())

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.targets, [p.detach() for p in model.parameters()], 1 - decay)  # one launch, not 100


class LossLog:
    """Training losses kept on the device and read every `every` steps: reading one each step would make the CPU wait
    for the GPU, and the next step's Python work (tokenising, sampling) could no longer overlap the current one."""

    def __init__(self, stage: str, every: int = 250) -> None:
        self.stage, self.every, self.pending, self.values = stage, every, [], []

    def add(self, step: int, loss: torch.Tensor, seconds: float) -> None:
        self.pending.append(loss.detach())
        if len(self.pending) == self.every:
            self.values += torch.stack(self.pending).float().tolist()
            self.pending = []
            log.info("%s step %d loss %.4f (%.0f s)", self.stage, step, np.mean(self.values[-self.every :]), seconds)

    def final(self, last: int) -> float:
        if self.pending:
            self.values += torch.stack(self.pending).float().tolist()
        return float(np.mean(self.values[-last:]))


class Compiled:
    """A training step function through `torch.compile`, run eagerly instead (and from then on) if compiling or running
    it ever fails: a compiler problem costs the run its speed-up, never its result."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.compiled = enabled, {}
        if enabled:  # each (function or block, shape, grad mode) is its own graph: a run uses up to about ten
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)

    def run(self, step: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        if not self.enabled:
            return step(*args)
        try:
            return self._compiled(step)(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure: fall back to eager and say so
            log.warning("torch.compile failed (%s: %s); training on eagerly", type(error).__name__, error)
            self._undo()
            self.enabled = False
            return step(*args)

    def _compiled(self, step: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if step not in self.compiled:
            self.compiled[step] = torch.compile(step)
        return self.compiled[step]

    def _undo(self) -> None:
        pass


def single_frame_convs(vae: torch.nn.Module) -> torch.nn.Module:
    """Every causal 3D convolution of the VAE (encoder and decoder) as the 2D convolution it is on one picture: the
    same weights, outputs and gradients, at a third of the stock path's work (which multiplies two of its three time
    slices by zero padding). Training and pool encoding only; the state dict is unchanged."""
    swap_causal_convs((vae,))
    return vae


class CompiledBlocks(Compiled):
    """`Compiled` for a transformer's repeated blocks (diffusers' `compile_repeated_blocks`: one block compiled, reused
    by all) while the step function around them runs eagerly; a failure uncompiles the blocks."""

    def __init__(self, model: torch.nn.Module, enabled: bool) -> None:
        super().__init__(enabled)
        self.model = model
        if enabled:
            model.compile_repeated_blocks(fullgraph=True, dynamic=False)

    def _compiled(self, step: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return step  # the blocks inside it are the compiled part

    def _undo(self) -> None:
        for module in self.model.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None


def lr_at(step: int, total: int, peak: float, warmup: int = 300) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Stopwatch:
    """A stage's clock and step budget. With a time cap, the step count is set after the first 60 steps to what fits
    in the cap (so the learning-rate schedule still runs to its end), lowered again if the rate drops, and a stage
    past its cap stops; the report records the steps run, and `--steps STAGE=N` without a cap repeats the schedule
    when the count was set once (a later lowering moved the schedule forward mid-stage, which N alone cannot replay)."""

    WARM, CALIBRATE_AT = 10, 60  # the rate is measured between these steps (the first ones pay for warm-up)
    RECALIBRATE = 500

    PROFILED = range(20, 26)  # with `profile`: the steps torch.profiler records, after which the stage ends

    def __init__(self, stage: str, minutes: float | None, total: int, profile: bool = False) -> None:
        self.stage, self.limit, self.total, self.profile = stage, (minutes or 0) * 60, total, profile
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def steps(self) -> Iterator[int]:
        step, profiler, since = 0, None, (self.WARM, 0.0)
        while step < self.total:
            if self.profile and step == self.PROFILED.start:
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                profiler = torch.profiler.profile(activities=activities[: 1 + torch.cuda.is_available()])
                profiler.__enter__()
                clock = time.perf_counter()
            yield step
            step += 1
            if profiler is not None and step == self.PROFILED.stop:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                per_step = (time.perf_counter() - clock) / len(self.PROFILED)
                profiler.__exit__(None, None, None)
                averages = profiler.key_averages()
                log.info("%s: %.1f ms per profiled step", self.stage, per_step * 1000)
                for key in ("self_cuda_time_total", "self_cpu_time_total"):
                    table = averages.table(sort_by=key, row_limit=25, max_name_column_width=60)
                    log.info("%s by %s\n%s", self.stage, key, table)
                self.total = step
            if step == self.WARM:
                since = (step, self.seconds)
            if self.limit and step >= self.CALIBRATE_AT and step % self.RECALIBRATE == self.CALIBRATE_AT:
                # Set at the first calibration, then checked again every RECALIBRATE steps at the rate since the last
                # check: the rate can drop later (another job on the GPU), and a stage that overran its cap would
                # overrun the whole device call. (Lowering the total moves the learning-rate schedule forward.)
                rate = (step - since[0]) / (self.seconds - since[1])
                since = (step, self.seconds)
                fits = step + int(0.97 * (self.limit - self.seconds) * rate)
                if fits < self.total:
                    log.warning("%s: %d of %d steps fit in %.1f min", self.stage, fits, self.total, self.limit / 60)
                    self.total = max(fits, step + 1, self.CALIBRATE_AT)
            if self.limit and step >= self.CALIBRATE_AT and self.seconds > self.limit * 1.05 and step < self.total:
                log.warning("%s: stopped at step %d of %d, past its %.1f min cap", self.stage, step, self.total,
                            self.limit / 60)  # fmt: skip
                self.total = step


def scene_pixels(rng: random.Random, count: int, size: int, device, seed: int) -> torch.Tensor:
    """Random scenes (any pairing: the VAE never sees captions) as pixels in [-1, 1]."""
    return render([sample_scene(rng) for _ in range(count)], size, device, seed=seed) * 2 - 1


# ----------------------------------------------------------------------------------------------- stage 1: VAE
def recolour(pixels: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """`pixels` ([-1, 1], (n, 3, h, w)) with the first `share` of them in random colours: each picture through its
    own random affine map of RGB (a 3x3 matrix and an offset), clamped. A VAE trained on the generator's ten colours
    alone bends every other colour into them (mid-grey came back purple): uploaded pictures need the rest."""
    count = round(len(pixels) * share)
    if count == 0:
        return pixels
    matrix = torch.randn(count, 3, 3, generator=generator) * 0.6
    offset = torch.rand(count, 3, 1, 1, generator=generator) * 2 - 1
    head = torch.einsum("nij,njhw->nihw", matrix.to(pixels.device), pixels[:count]) + offset.to(pixels.device)
    return torch.cat([head.clamp(-1, 1), pixels[count:]])


def edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Reconstruction (L1 + MSE, and L1 on the pixel differences, which keeps corners and edges sharp where the plain
    losses settle for a blur that turns diamonds into circles) and a faint KL; backpropagated."""
    device = pixels.device
    with bf16(device):
        posterior = vae.encode(pixels[:, :, None]).latent_dist
        recon = vae.decode(posterior.sample()).sample[:, :, 0]
    recon = recon.float()
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1 - posterior.logvar.float()).mean()
    edge = sum(F.l1_loss(a, b) for a, b in zip(edges(recon), edges(pixels), strict=True))
    loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + edge + 1e-6 * kl
    loss.backward()
    return loss


def train_vae(work: Path, budget: Budget, device: torch.device) -> dict:
    torch.manual_seed(10)
    rng = random.Random(10)
    vae = single_frame_convs(build_vae()).to(device).train()
    peak = 8e-4
    optimizer = torch.optim.AdamW(vae.parameters(), lr=peak, weight_decay=0.0, betas=(0.9, 0.99))
    watch = Stopwatch("vae", (budget.minutes or {}).get("vae"), budget.vae_steps, budget.profile)
    losses = LossLog("vae")
    colours = torch.Generator().manual_seed(11)
    compiled = Compiled(compiles(budget, "vae"))  # the whole step: the VAE's time goes to small elementwise kernels
    for step in watch.steps():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, watch.total, peak, warmup=100)
        pixels = recolour(scene_pixels(rng, budget.vae_batch, 256, device, seed=step), budget.vae_recolour, colours)
        optimizer.zero_grad(set_to_none=True)
        loss = compiled.run(vae_loss, vae, pixels)
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.add(step, loss, watch.seconds)
    vae.eval()
    stats = latent_statistics(vae, device, budget.stat_pictures)
    vae.register_to_config(latents_mean=stats["mean"], latents_std=stats["std"])
    save_file(vae.state_dict(), work / "vae.safetensors")
    (work / "vae.json").write_text(json.dumps(stats))
    return {
        "steps": watch.total,
        "batch": budget.vae_batch,
        "seconds": round(watch.seconds, 1),
        "compiled": compiled.enabled,
        "final_loss": losses.final(100),
        "round_trip_accuracy": round_trip_accuracy(vae, device, budget.round_trip_pictures),
        **({"recolour": budget.vae_recolour} if budget.vae_recolour else {}),
        "colour_error": colour_round_trip(vae, device),
    }


@torch.no_grad()
def colour_errors(vae, device: torch.device, colours) -> list[float]:
    """How far each flat colour (0-255 RGB) comes back from an encode/decode: the largest channel error, 0-255, at
    the centre of a 64² patch of it."""
    rgb = torch.tensor(list(colours), dtype=torch.float32, device=device)
    x = (rgb / 127.5 - 1).view(-1, 3, 1, 1, 1).expand(-1, 3, 1, 64, 64).contiguous()
    with bf16(device):
        y = vae.decode(vae.encode(x.to(vae.dtype)).latent_dist.mode()).sample[:, :, 0].float()
    back = ((y.clamp(-1, 1) + 1) * 127.5)[:, :, 16:48, 16:48].mean((2, 3))
    return [round(float(error), 1) for error in (back - rgb).abs().amax(1)]


def colour_round_trip(vae, device: torch.device) -> dict[str, float]:
    """`colour_errors` at their worst for the generator's ten colours, and for colours it never draws (a fixed 64,
    greys and pure primaries among them): what an uploaded picture meets."""
    others = [(128, 128, 128), (0, 0, 255), (0, 255, 0), (255, 0, 0), (64, 64, 64), (200, 200, 200)]
    rng = random.Random(13)
    others += [tuple(rng.randrange(256) for _ in range(3)) for _ in range(64 - len(others))]
    return {
        "palette": max(colour_errors(vae, device, COLOURS.values())),
        "others": max(colour_errors(vae, device, others)),
    }


@torch.no_grad()
def round_trip_accuracy(vae, device: torch.device, pictures: int = 256) -> float:
    """The scorer's accuracy on held-out ground-truth pictures after a VAE encode/decode: the ceiling of what any
    transformer can score through this VAE."""
    from demo.scenes import held_out, scene_for
    from demo.score import judge, read_all

    compositions = held_out()[:pictures]
    rng = random.Random(12)
    pixels = render([scene_for(c, rng) for c in compositions], 256, device, seed=12) * 2 - 1
    decoded = []
    for chunk in pixels.split(64):
        z = vae.encode(chunk[:, :, None]).latent_dist.mode()
        decoded.append(((vae.decode(z).sample[:, :, 0].float().clamp(-1, 1) + 1) / 2).cpu())
    verdicts = [judge(r, c)["correct"] for r, c in zip(read_all(list(torch.cat(decoded))), compositions, strict=True)]
    return round(sum(verdicts) / len(verdicts), 4)


def frame_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) pictures in [-1, 1] -> their (B, 16, h/8, w/8) latents, the posterior's mode, in fp32."""
    return vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0].float()


@torch.no_grad()
def latent_statistics(vae, device: torch.device, pictures: int = 1024) -> dict:
    """Per-channel mean/std of the latents (the pipeline normalises with them), and the least-squares linear map from
    normalised latents to RGB that the live preview uses."""
    rng = random.Random(11)
    latents, colours = [], []
    for chunk in range(pictures // 64):
        pixels = scene_pixels(rng, 64, 256, device, seed=10_000 + chunk)
        z = frame_latents(vae, pixels)
        latents.append(z)
        colours.append(F.avg_pool2d(pixels, 8))
    z = torch.cat(latents)
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    normalised = ((z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, 16)
    rgb = torch.cat(colours).permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([normalised, torch.ones(len(normalised), 1, device=device)], dim=1)
    solution = torch.linalg.lstsq(design.cpu(), rgb.cpu()).solution  # (17, 3): factors and bias, for (x+1)/2 output
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "rgb_factors": solution[:16].tolist(),
        "rgb_bias": solution[16].tolist(),
    }


def load_vae(work: Path, device: torch.device):
    vae = build_vae()
    stats = json.loads((work / "vae.json").read_text())
    vae.register_to_config(latents_mean=stats["mean"], latents_std=stats["std"])
    vae.load_state_dict(load_file(work / "vae.safetensors"))
    return single_frame_convs(vae).to(device).eval().requires_grad_(False), stats


class LatentPool:
    """Captioned latents drawn once and sampled from at every step: rendering and VAE-encoding a fresh batch each step
    cost more than the tiny transformer's training step (the first GPU run measured it). The captions are tokenised
    once too: tokenising a thousand captions at every step kept the GPU waiting (the profile measured it). A size
    with no pictures is left out (`sizes()` says which the pool holds); `seconds` splits the drawing time by phase."""

    def __init__(self, rng: random.Random, exclude, encode: LatentEncoder, tokens: Tokens, sizes: dict[int, int],
                 device, style: str = "plain", mix: dict[str, float] | None = None,
                 shares: bool = False, colours: bool = False) -> None:  # fmt: skip
        self.latents: dict[int, torch.Tensor] = {}
        self.captions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.labels: dict[int, torch.Tensor] = {}  # each picture's `structure_labels`
        # With `shares`: each picture's `kind_coverage` per image token, and with `colours` its `colour_coverage` after
        self.shares: dict[int, torch.Tensor] = {}
        self.empty = tokens([""])
        self.seconds = {"scenes": 0.0, "render": 0.0, "encode": 0.0, "tokenise": 0.0}
        for size, count in sizes.items():
            if count <= 0:
                continue
            # 512 pictures at 256², 128 at 512² (the same pixels per chunk). Integer division made it 1 at 512² until
            # session m: 512² pictures were drawn one at a time (~60-80 s of a ~100 s pool on an H200).
            chunk = max(1, round(512 * (256 / size) ** 2))
            with self._timed("scenes", device):
                scenes = [sample_scene(rng, exclude, style, mix) for _ in range(count)]
            parts, maps = [], []
            for start in range(0, count, chunk):
                with self._timed("render", device):
                    pixels = render(scenes[start : start + chunk], size, device, seed=start + size) * 2 - 1
                    if shares:  # one image token covers 16x16 pixels (the VAE's 8x, the transformer's 2x2 patches)
                        these = scenes[start : start + chunk]
                        found = [kind_coverage(these, size, 16, device)]
                        if colours:
                            found.append(colour_coverage(these, size, 16, device))
                        maps.append(torch.cat(found, dim=-1).to(torch.bfloat16))
                with self._timed("encode", device), bf16(device):
                    parts.append(encode(pixels).to(torch.bfloat16))
            self.latents[size] = torch.cat(parts)
            if shares:
                self.shares[size] = torch.cat(maps)
            with self._timed("tokenise", device):
                self.captions[size] = tokens([s.caption for s in scenes])
            self.labels[size] = torch.tensor([structure_labels(s) for s in scenes], device=device)

    @contextlib.contextmanager
    def _timed(self, phase: str, device: torch.device) -> Iterator[None]:
        """Adds the phase's time, the GPU's work included (one sync per phase and chunk: the pool is drawn once)."""
        clock = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds[phase] += time.perf_counter() - clock

    def sizes(self) -> tuple[int, ...]:
        return tuple(self.latents)

    def sample(
        self, size: int, count: int, dropout: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latents, token ids, attention mask, structure labels, kind shares or None) of `count` random pool
        entries; `dropout` of the captions empty (their labels all `IGNORE`: an empty caption says nothing; the
        shares stay, as they describe the picture)."""
        latents = self.latents[size]
        index = torch.randint(len(latents), (count,), device=latents.device)
        dropped = (torch.rand(count, device=latents.device) < dropout)[:, None]
        (empty_ids, empty_mask), (ids, mask) = self.empty, self.captions[size]
        ids, mask = torch.where(dropped, empty_ids, ids[index]), torch.where(dropped, empty_mask, mask[index])
        labels = torch.where(dropped, IGNORE, self.labels[size][index])
        shares = self.shares[size][index].float() if size in self.shares else None
        return latents[index].float(), ids, mask, labels, shares


class Tokens:
    """Captions -> (token ids, attention mask) on the device, exactly as `Krea2Pipeline.get_text_hidden_states`
    tokenises them for a `TEXT_TOKENS` window (`[prefix | caption | PAD | suffix]`); `hidden_states` then runs the
    text encoder on them as that method does (tests/test_demo_model.py holds the two equal)."""

    def __init__(self, pipe, device: torch.device) -> None:
        self.pipe, self.device = pipe, device

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipe
        window = TEXT_TOKENS + pipe.prompt_template_encode_start_idx - pipe.prompt_template_encode_num_suffix_tokens
        text = [pipe.prompt_template_encode_prefix + caption for caption in captions]
        tokens = pipe.tokenizer(text, truncation=True, padding="max_length", max_length=window, return_tensors="pt")
        suffix = pipe.tokenizer([pipe.prompt_template_encode_suffix] * len(text), return_tensors="pt")
        ids = torch.cat([tokens.input_ids, suffix.input_ids], dim=1)
        mask = torch.cat([tokens.attention_mask, suffix.attention_mask], dim=1).bool()
        return ids.to(self.device), mask.to(self.device)

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipe
        positions = (mask.long().cumsum(dim=-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
        outputs = pipe.text_encoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
        hidden = torch.stack([outputs.hidden_states[i] for i in pipe.text_encoder_select_layers], dim=2)
        start = pipe.prompt_template_encode_start_idx
        return hidden[:, start:], mask[:, start:]


class LatentEncoder:
    """Pictures -> the normalised, packed latents the transformer denoises."""

    def __init__(self, vae, stats: dict, device: torch.device, compiled: Compiled | None = None) -> None:
        self.vae, self.compiled = vae, compiled or Compiled(False)
        self.mean = torch.tensor(stats["mean"], device=device).view(1, 16, 1, 1)
        self.std = torch.tensor(stats["std"], device=device).view(1, 16, 1, 1)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.compiled.run(self.normalised_latents, pixels)

    def normalised_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        return pack((frame_latents(self.vae, pixels) - self.mean) / self.std)


# ----------------------------------------------------------------------------------------------- stage 2: Raw
def make_pipeline(vae, text_encoder, tokenizer, transformer, is_distilled: bool):
    from diffusers import Krea2Pipeline

    pipe = Krea2Pipeline(
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        text_encoder_select_layers=TEXT_LAYERS,
        is_distilled=is_distilled,
    )
    derive_prompt_template_lengths(pipe)
    return pipe


def resolution(
    rng: random.Random, step: int, base_batch: int, sizes: tuple[int, ...] = (256, 512),
    shares: dict[int, float] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """(size, batch) for a step. A batch at size s holds `base_batch` · (256/s)² pictures: the same image tokens at
    every size (each picture also brings its caption's 40 text tokens, so a 128² step holds ~1.4x a 256² one's).
    Without `shares`: a fifth of the steps at 512², if 512² is among `sizes`, the rest at 256². With `shares` (size ->
    share of the steps, `--size-mix`): each size with a share drawn with it. Either way the first steps take one of
    each size, so every shape is compiled and warm before the Stopwatch measures the step rate."""
    if shares is None:
        large = 512 in sizes and (step == 1 or (step > 1 and rng.random() < 0.2))
        return (512, max(1, base_batch // 4)) if large else (256, base_batch)
    ordered = sorted(size for size, share in shares.items() if share > 0)
    if step < len(ordered):
        size = ordered[step]
    else:
        draw, size = rng.random(), ordered[-1]
        for candidate in ordered:
            draw -= shares[candidate]
            if draw < 0:
                size = candidate
                break
    return size, max(1, round(base_batch * (256 / size) ** 2))


# The text fusion's layer-wise attention runs one sequence per caption token: pictures per step x TEXT_TOKENS of them in
# one attention call. On session n's H200, cuDNN's attention backward failed at 81,920 (a 128² batch of 2,048;
# `mha_graph.execute(...).is_good()`, compiled and eager alike), while 40,960 had run (2026-12-02: 256² batches of
# 1,024). 65,536 is cuDNN's batch limit as reported upstream (the other kernels put the batch in a 65,535-long grid
# dimension too), so a recipe past it is refused before its pool is drawn instead of crashing a device call.
MAX_TEXT_SEQUENCES = 65_535


def largest_batch(budget: Budget) -> int:
    """The most pictures one Raw step takes (`resolution`'s batch at the smallest size the pool draws)."""
    drawn = [size for size, count in (budget.raw_pool or {}).items() if count > 0] or [256]
    return max(1, round(budget.raw_batch * (256 / min(drawn)) ** 2))


def velocity(transformer, latents, embeds, mask, sigma, size: int) -> torch.Tensor:
    """The transformer's velocity for packed `latents` at noise level `sigma` (one per picture), pictures `size`²."""
    return transformer(
        hidden_states=latents,
        encoder_hidden_states=embeds,
        timestep=sigma,
        position_ids=image_positions(embeds.shape[1], size // 16, latents.device),
        encoder_attention_mask=mask,
        return_dict=False,
    )[0]


# What a caption says, one class per field, for the caption-structure objective: the relation (0 for none), then the
# subject's colour and kind, then the object's (a relation's second shape; IGNORE where there is none), then the
# background's colour and texture (since session q: its probes drew the background the caption names for 12 % of
# held-out singles, chance, while the subject's colour, which the objective read, came out right for 94 %).
IGNORE = -100  # F.cross_entropy's ignore_index
STRUCTURE_CLASSES = {
    "relation": 1 + len(RELATIONS),
    "subject_colour": len(COLOURS),
    "subject_kind": len(KINDS),
    "object_colour": len(COLOURS),
    "object_kind": len(KINDS),
    "background": len(COLOURS),
    "texture": len(TEXTURES),
}


def structure_labels(scene: Scene) -> list[int]:
    """A scene's `STRUCTURE_CLASSES` labels, in that order: shapes[0] is the first-named shape in every layout."""
    colours, subject = list(COLOURS), scene.shapes[0]
    other = scene.shapes[1] if scene.layout == "relation" else None
    return [
        0 if scene.relation is None else 1 + list(RELATIONS).index(scene.relation),
        colours.index(subject.colour),
        KINDS.index(subject.kind),
        IGNORE if other is None else colours.index(other.colour),
        IGNORE if other is None else KINDS.index(other.kind),
        colours.index(scene.background),
        TEXTURES.index(scene.texture),
    ]


class CaptionStructure(torch.nn.Module):
    """Linear read-outs of what a caption says (`STRUCTURE_CLASSES`) from the transformer's text features, averaged
    over the caption's tokens: Raw's optional second objective, trained with the text side and thrown away after.
    Why: the text encoder here is trained from scratch with Raw, and session k found that it had dropped a relation's
    direction (its features moved 0.0014 when "left of" became "right of", against 0.48 for a colour); the real
    Krea 2's Qwen3-VL comes pretrained and keeps such things apart. Reading the direction, and which colour and kind
    belong to the subject and which to the object, back from the pooled features makes the text side keep them;
    whether the transformer then uses them is what the held-out relations measure."""

    def __init__(self, transformer, weight: float) -> None:
        super().__init__()
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim  # txt_in's output
        self.weight = weight
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in STRUCTURE_CLASSES.values())
        self.last: torch.Tensor | None = None  # the last step's loss (detached), for the round's loss log

    @staticmethod
    @contextlib.contextmanager
    def reading(transformer) -> Iterator[list[torch.Tensor]]:
        """Keeps the text features the transformer's own forward pass computes (its `txt_in` output), so the loss
        needs no second pass through the text fusion."""
        captured: list[torch.Tensor] = []
        handle = transformer.txt_in.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            yield captured
        finally:
            handle.remove()

    def loss(self, features: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over every label given (`IGNORE`d ones left out) for text `features` (batch,
        tokens, width) whose tokens `mask` says are there."""
        weights = mask.unsqueeze(-1).float()
        pooled = (features.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        total, counted = pooled.new_zeros(()), (labels != IGNORE).sum().clamp(min=1)
        for field, head in enumerate(self.heads):
            total = total + F.cross_entropy(head(pooled), labels[:, field], ignore_index=IGNORE, reduction="sum")
        self.last = (total / counted).detach()
        return total / counted


class ShapeMaps(torch.nn.Module):
    """A linear read-out, from each image token's features where the blocks end (what the output layer reads), of
    what the clean picture shows under that token: the share of background and of each shape kind (`kind_coverage`);
    Raw's optional third objective, thrown away after training. Why (a hypothesis, bench/NOTES.md session o):
    session n's from-scratch Raw bound colours within 1,000 steps but drew the asked kind at chance through 2,000. A
    colour is one value for all of a shape's latents, a kind an outline the tokens around it must agree on, and the
    velocity loss rewards the kind only once they do; this objective asks every token for its kind at every noise
    level, from the noisy latents and the caption, so the features the output layer draws from must carry it (as
    REPA gives a DiT's features a direct target, here the generator's ground truth instead of an encoder's)."""

    def __init__(self, transformer, weight: float, colour_weight: float = 0.0) -> None:
        super().__init__()
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.weight, self.colour_weight = weight, colour_weight
        self.head = torch.nn.Linear(width, 1 + len(KINDS))
        # With `colour_weight`, a second read-out of each token's palette colour (`colour_coverage`, after the kinds
        # in the targets): a background token's colour comes from the caption's background words alone.
        self.colours = torch.nn.Linear(width, len(COLOURS)) if colour_weight else None
        self.last: torch.Tensor | None = None  # the last step's kind loss (detached), for the round's loss log
        self.last_colour: torch.Tensor | None = None  # and its colour loss

    @staticmethod
    @contextlib.contextmanager
    def reading(transformer) -> Iterator[list[torch.Tensor]]:
        """Keeps the image tokens' features the transformer's own forward pass hands its output layer (outside the
        compiled blocks, so the hook costs no recompile)."""
        captured: list[torch.Tensor] = []
        handle = transformer.final_layer.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            yield captured
        finally:
            handle.remove()

    def loss(self, features: torch.Tensor, mask: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of the read-out against the tokens' `shares` (batch, tokens, classes: the kinds', then
        with a colour read-out the colours'), over every token, the colours' weighted by `colour_weight / weight`
        (the caller weighs the whole by `weight`); `mask` (the caption's) is not needed: every picture has its map."""
        features = features.float()
        kinds = 1 + len(KINDS)
        loss = -(shares[..., :kinds] * F.log_softmax(self.head(features), dim=-1)).sum(dim=-1).mean()
        self.last = loss.detach()
        if self.colours is None:
            return loss
        colour = -(shares[..., kinds:] * F.log_softmax(self.colours(features), dim=-1)).sum(dim=-1).mean()
        self.last_colour = colour.detach()
        return loss + self.colour_weight / self.weight * colour


def zero_modulation(transformer) -> None:
    """adaLN-Zero (DiT, Peebles & Xie 2023): the timestep's modulation projection and the output projection start at
    zero, so every block starts as the identity (its gates are zero) and the first prediction is zero. diffusers builds
    them with PyTorch's default init: random gates that scale each block's output by the timestep from the first step.
    DiT measured adaLN-Zero learning markedly faster than the same modulation without the zeros. Unlike DiT's, the
    final layer's scale and shift come straight from the timestep embedding, which stays as built: zeroing it too
    would leave the blocks' modulation no gradient at all."""
    with torch.no_grad():
        for linear in (transformer.time_mod_proj, transformer.final_layer.linear):
            linear.weight.zero_()
            linear.bias.zero_()


def flow_matching_loss(
    tokens: Tokens, transformer, x0, noise, sigma, ids, mask, size: int,
    objectives: tuple[tuple[CaptionStructure | ShapeMaps, torch.Tensor], ...] = (),
) -> torch.Tensor:  # fmt: skip
    """One Raw training step's loss, backpropagated: the velocity `noise - x0` at the noisy point for `sigma`. Each
    (objective, its targets) in `objectives` reads the features it needs from that same forward pass, and its
    weighted loss is backpropagated too (the flow-matching loss is returned)."""
    device = x0.device
    noisy = (1 - sigma) * x0 + sigma * noise
    with bf16(device), contextlib.ExitStack() as stack:
        embeds, mask = tokens.hidden_states(ids, mask)
        read = [stack.enter_context(objective.reading(transformer)) for objective, _ in objectives]
        predicted = velocity(transformer, noisy, embeds, mask, sigma.view(-1), size)
        stack.close()  # the hooks are off before anything else runs the transformer
        extra = sum(o.weight * o.loss(f[0], mask, target) for (o, target), f in zip(objectives, read, strict=True))
    loss = F.mse_loss(predicted.float(), noise - x0)
    (loss + extra).backward()
    return loss


def train_raw(work: Path, budget: Budget, device: torch.device) -> list[dict]:
    torch.manual_seed(20 + budget.raw_round)
    rng = random.Random(20 + budget.raw_round)
    exclude = held_out_triples()
    vae, stats = load_vae(work, device)
    if budget.raw_round:  # a further round continues from the last round's (EMA) weights
        tokenizer, text_encoder = load_text_side(work, device)
        text_encoder.train(not budget.freeze_text_encoder).requires_grad_(not budget.freeze_text_encoder)
        transformer = load_transformer(work / "raw_transformer.safetensors", device).train()
    else:
        tokenizer = build_tokenizer(vocabulary())
        tokenizer.save_pretrained(work / "tokenizer")
        text_encoder = build_text_encoder(len(tokenizer), width=budget.text_width).to(device).train()
        width, layers = budget.transformer
        transformer = build_transformer(seed=2, width=width, layers=layers, text_width=budget.text_width)
        if budget.zero_init:
            zero_modulation(transformer)
        transformer = transformer.to(device).train()
    # Building or loading a transformer seeds torch (krea2.demo.build_transformer), which made every later round draw
    # the same batches, noise and caption dropout; the round's own stream starts here.
    torch.manual_seed(120 + budget.raw_round)
    pipe = make_pipeline(vae, text_encoder, tokenizer, transformer, is_distilled=False)
    tokens = Tokens(pipe, device)
    clock = time.perf_counter()
    encoder = LatentEncoder(vae, stats, device, Compiled(compiles(budget, "raw")))
    shape_maps = None
    if budget.shape_map_weight:
        shape_maps = ShapeMaps(transformer, budget.shape_map_weight, budget.colour_map_weight).to(device)
    pool = LatentPool(
        rng,
        exclude,
        encoder,
        tokens,
        budget.raw_pool,
        device,
        mix=budget.layout_mix,
        shares=shape_maps is not None,
        colours=bool(budget.colour_map_weight),
    )
    pool_seconds = time.perf_counter() - clock
    log.info("raw: %s pictures in %.0f s (%s)", budget.raw_pool, pool_seconds, rounded(pool.seconds))
    structure = None
    if budget.structure_weight:  # its heads share the gradient clipping below: a large weight would scale Raw's down
        structure = CaptionStructure(transformer, budget.structure_weight).to(device)
    parameters = [
        p for m in (transformer, text_encoder, structure, shape_maps) if m is not None for p in m.parameters()
    ]
    parameters = [p for p in parameters if p.requires_grad]
    peak = budget.raw_lr
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(parameters, lr=peak, weight_decay=0.01, betas=(0.9, 0.99), fused=fused)
    ema_t, ema_e = Ema(transformer, EMA_DECAY), Ema(text_encoder, EMA_DECAY)
    blocks = CompiledBlocks(transformer, compiles(budget, "raw"))
    minutes = (budget.minutes or {}).get("raw")
    watch = Stopwatch("raw", minutes and minutes - pool_seconds / 60, budget.raw_steps, budget.profile)
    losses, structure_losses, shape_map_losses = LossLog("raw"), LossLog("raw structure"), LossLog("raw shape maps")
    colour_map_losses = LossLog("raw colour maps")
    curve: list[dict] = []
    for step in watch.steps():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, watch.total, peak, warmup=200 if budget.raw_round == 0 else 50)
        size, count = resolution(rng, step, budget.raw_batch, pool.sizes(), budget.raw_size_mix)
        x0, ids, mask, labels, shares = pool.sample(size, count, CAPTION_DROPOUT)
        noise = torch.randn_like(x0)
        sigma = training_sigmas(x0.shape[1], count, device).view(-1, 1, 1)
        objectives = tuple((o, t) for o, t in ((structure, labels), (shape_maps, shares)) if o is not None)
        optimizer.zero_grad(set_to_none=True)
        loss = blocks.run(flow_matching_loss, tokens, transformer, x0, noise, sigma, ids, mask, size, objectives)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        ema_t.update(transformer, step)
        if not budget.freeze_text_encoder:  # a frozen one is saved bit for bit as it was loaded
            ema_e.update(text_encoder, step)
        losses.add(step, loss, watch.seconds)
        if structure is not None:
            structure_losses.add(step, structure.last, watch.seconds)
        if shape_maps is not None:
            shape_map_losses.add(step, shape_maps.last, watch.seconds)
            if shape_maps.colours is not None:
                colour_map_losses.add(step, shape_maps.last_colour, watch.seconds)
        if budget.probe_every and (step + 1) % budget.probe_every == 0:
            sheet = work / "probes" / f"raw-{step + 1}.png"
            curve.append(
                {"step": step + 1, "seconds": round(watch.seconds, 1), **probe(vae, tokenizer, ema_e, ema_t, sheet)}
            )
            log.info("raw probe: %s", curve[-1])
    save_transformer(ema_t.model, work / "raw_transformer.safetensors")
    save_file(ema_e.model.state_dict(), work / "text_encoder.safetensors")
    rounds = json.loads((work / "report.json").read_text()).get("raw", []) if (work / "report.json").exists() else []
    rounds = rounds if isinstance(rounds, list) else [rounds]
    this = {
        "round": budget.raw_round,
        "transformer": shape_of(transformer),
        "pool": budget.raw_pool,
        **({"size_mix": budget.raw_size_mix} if budget.raw_size_mix else {}),
        "layout_mix": budget.layout_mix or LAYOUT_MIX,
        "pool_seconds": round(pool_seconds, 1),
        "pool_phases_s": rounded(pool.seconds),
        "batch": budget.raw_batch,
        "peak_lr": peak,
        "compiled": blocks.enabled,
        "steps": watch.total,
        "seconds": round(watch.seconds, 1),
        "final_loss": losses.final(200),
    }
    if budget.freeze_text_encoder:
        this["text_encoder"] = "frozen"
    if budget.zero_init:
        this["init"] = "adaLN-Zero"
    if structure is not None:
        this["structure_weight"] = structure.weight
        this["final_structure_loss"] = structure_losses.final(200)
    if shape_maps is not None:
        this["shape_map_weight"] = shape_maps.weight
        this["final_shape_map_loss"] = shape_map_losses.final(200)
        if shape_maps.colours is not None:
            this["colour_map_weight"] = shape_maps.colour_weight
            this["final_colour_map_loss"] = colour_map_losses.final(200)
    if curve:
        this["probes"] = curve
    return [*rounds[: budget.raw_round], this]


PROBE_STEPS, PROBE_SINGLES, PROBE_OTHERS = 20, 48, 8


@torch.no_grad()
def ground_truth(
    pipe, compositions: list[Composition], size: int, seed: int, rng: random.Random, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Ground-truth pictures of `compositions` (places and sizes drawn from `rng`, rendered with `seed`) as Raw's
    normalised latents, noise for them, and the generator that drew the noise (what else is drawn continues it)."""
    from demo.scenes import scene_for

    device = pipe._execution_device
    vae = pipe.vae
    stats = {"mean": vae.config.latents_mean, "std": vae.config.latents_std}
    scenes = [scene_for(c, rng) for c in compositions]
    pixels = render(scenes, size, device, seed=seed) * 2 - 1
    encoder = LatentEncoder(vae, stats, device)
    with bf16(device):
        x0 = torch.cat([encoder(part) for part in pixels.split(chunk)]).float()
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    return x0, noise, generator


@torch.no_grad()
def caption_gain(pipe, compositions: list[Composition], size: int = 256, seed: int = 5) -> float:
    """How much the right caption lowers Raw's flow-matching loss on ground-truth pictures of `compositions`, against
    another composition's caption, with the same pictures, noise and noise levels: 1 - loss(right) / loss(other).
    0 for a transformer that ignores its caption. Meant to rise before the pictures come out right, so that early
    probes can tell two recipes apart, and it does: the committed Raw's from-scratch run (probes on 64 prompts,
    demo/results/train-2026-12-06w-h100.json) gained 0.60 at step 1,000 while 20 % of its pictures were right, 0.83
    at 2,000 (62.5 %), 0.92 at 4,000 (92 %)."""
    device = pipe._execution_device
    x0, noise, generator = ground_truth(pipe, compositions, size, seed, random.Random(seed))
    sigma = training_sigmas(x0.shape[1], len(x0), generator=generator).to(device)
    noisy = (1 - sigma.view(-1, 1, 1)) * x0 + sigma.view(-1, 1, 1) * noise
    tokens = Tokens(pipe, device)
    captions = [c.prompt for c in compositions]  # what scene_for captions each picture with
    losses = []
    for these in (captions, captions[1:] + captions[:1]):  # each picture with its own caption, then its neighbour's
        with bf16(device):
            embeds, mask = tokens.hidden_states(*tokens(these))
            predicted = velocity(pipe.transformer, noisy, embeds, mask, sigma, size)
        losses.append(F.mse_loss(predicted.float(), noise - x0).item())
    return 1 - losses[0] / losses[1]


@torch.no_grad()
def probe(vae, tokenizer, ema_e: Ema, ema_t: Ema, sheet: Path | None = None) -> dict:
    """Held-out accuracy of the EMA weights now, on a fixed sample of `demo.evaluate`'s prompts (48 single shapes, 8
    counts, 8 relations, one seed) at Raw's guidance and 20 steps: a point on the learning curve, a second or two on a
    GPU. It says whether more of the same training would reach the targets; `demo.evaluate` gives the numbers.
    `direction_difference` is `demo.failures.text_separation`'s "direction swapped" over the 30 held-out relations:
    how far the text features move when a relation's direction is swapped (session k's checkpoints: 0.0014, against
    0.48 for a colour); relations cannot come out in order before it rises. `caption_gain` (on ground-truth pictures
    of the same prompts) is meant to move before the accuracies do. `sheet`, if given, gets the pictures as one PNG
    (48 singles, then the counts and relations, in `chosen`'s order): what the numbers cannot say about a failure."""
    from demo.evaluate import SIZE, grid, score
    from demo.failures import text_separation
    from demo.scenes import held_out

    compositions = held_out()
    sample = random.Random(7)
    chosen = [
        *sample.sample([c for c in compositions if c.layout == "single"], PROBE_SINGLES),
        *sample.sample([c for c in compositions if c.layout != "single"], 2 * PROBE_OTHERS),
    ]
    pipe = make_pipeline(vae, ema_e.model, tokenizer, ema_t.model, is_distilled=False)
    device = next(ema_t.model.parameters()).device
    with bf16(device):
        pictures = pipe(
            prompt=[c.prompt for c in chosen],
            height=SIZE,
            width=SIZE,
            num_inference_steps=PROBE_STEPS,
            guidance_scale=TEACHER_GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="pt",
            max_sequence_length=64,
        ).images
    result = score(chosen, pictures.float().cpu())
    if sheet is not None:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        grid(pictures.float().cpu()).save(sheet)
    layouts = {f"{layout}_correct": result[layout]["correct"] for layout in ("single", "count", "relation")}
    relations = [c for c in compositions if c.layout == "relation"]
    direction = text_separation(pipe, relations)["direction swapped"]
    return {
        "accuracy": result["accuracy"],
        **layouts,
        "single_colour": result["single"]["colour"],
        "single_kind": result["single"]["kind"],
        "single_background": result["single"]["background"],
        "single_count": result["single"]["count"],
        "caption_gain": round(caption_gain(pipe, chosen), 4),
        "direction_difference": direction,
    }


def load_text_side(work: Path, device: torch.device):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    weights = load_file(work / "text_encoder.safetensors")
    width = weights["language_model.embed_tokens.weight"].shape[1]  # the width it was trained at (--text-width)
    text_encoder = build_text_encoder(len(tokenizer), width=width)
    text_encoder.load_state_dict(weights)
    return tokenizer, text_encoder.to(device).eval().requires_grad_(False)


def shape_of(transformer: torch.nn.Module) -> dict[str, int]:
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    return {"width": width, "layers": config.num_layers, "text_width": config.text_hidden_dim}


def fp32(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights as the work folder keeps them: fp32, contiguous."""
    return {k: v.float().contiguous() for k, v in module.state_dict().items()}


def save_transformer(transformer: torch.nn.Module, path: Path) -> None:
    """A work folder's transformer weights, with their shape in the file's metadata (`load_transformer` builds it)."""
    save_file(fp32(transformer), path, metadata={key: str(value) for key, value in shape_of(transformer).items()})


def load_transformer(path: Path, device: torch.device):
    """A work folder's transformer, in the shape its file's metadata names (the default shape for a file without)."""
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata() or {}
    shape = {key: int(metadata[key]) for key in ("width", "layers", "text_width") if key in metadata}
    transformer = build_transformer(**shape)
    transformer.load_state_dict(load_file(path))
    return transformer.to(device)


# ----------------------------------------------------------------------------------------------- stage 3: Turbo
def turbo_sigmas() -> torch.Tensor:
    """Turbo's 9 sigmas (8 steps and the end), exactly as Krea2Pipeline's scheduler sets them for a distilled model."""
    scheduler = build_scheduler()
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / TURBO_STEPS, TURBO_STEPS), mu=TURBO_MU)
    return scheduler.sigmas.float()


@torch.no_grad()
def teacher_trajectories(pipe, teacher, captions: list[str], size: int, device, seed: int) -> torch.Tensor:
    """Raw's guided ODE solution from noise, recorded at Turbo's 9 sigmas: (batch, 9, tokens, 64)."""
    embeds, mask = pipe.get_text_hidden_states(captions, TEXT_TOKENS, device)
    empty, empty_mask = pipe.get_text_hidden_states([""] * len(captions), TEXT_TOKENS, device)
    positions = image_positions(embeds.shape[1], size // 16, device)
    empty_positions = image_positions(empty.shape[1], size // 16, device)
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(len(captions), (size // 16) ** 2, 64, device=device, generator=generator)
    sigmas = turbo_sigmas().tolist()
    states = [x]
    for high, low in itertools.pairwise(sigmas):
        for k in range(TEACHER_SUBSTEPS):
            s = high + (low - high) * k / TEACHER_SUBSTEPS
            s_next = high + (low - high) * (k + 1) / TEACHER_SUBSTEPS
            t = torch.full((len(captions),), s, device=device)
            with bf16(device):
                cond = teacher(x, embeds, t, positions, mask, return_dict=False)[0].float()
                uncond = teacher(x, empty, t, empty_positions, empty_mask, return_dict=False)[0].float()
            x = x + (s_next - s) * (cond + TEACHER_GUIDANCE * (cond - uncond))
        states.append(x)
    return torch.stack(states, dim=1).to(torch.bfloat16)


def distillation_loss(student, current, target, embeds, mask, sigma, size: int) -> torch.Tensor:
    """One Turbo training step's loss, backpropagated: the student's velocity against the teacher's step."""
    with bf16(current.device):
        predicted = velocity(student, current, embeds, mask, sigma, size)
    loss = F.mse_loss(predicted.float(), target)
    loss.backward()
    return loss


def train_turbo(work: Path, budget: Budget, device: torch.device) -> dict:
    torch.manual_seed(30)
    rng = random.Random(30)
    exclude = held_out_triples()
    vae, _ = load_vae(work, device)
    tokenizer, text_encoder = load_text_side(work, device)
    teacher = load_transformer(work / "raw_transformer.safetensors", device).eval().requires_grad_(False)
    student = load_transformer(work / "raw_transformer.safetensors", device).train()  # starts as Raw
    pipe = make_pipeline(vae, text_encoder, tokenizer, teacher, is_distilled=True)
    tokens = Tokens(pipe, device)
    clock = time.perf_counter()

    # 1. Raw's trajectories, 3/4 of them at 256² and 1/4 at 512², in chunks of one shape (one compiled graph each).
    compiled_teacher = CompiledBlocks(teacher, compiles(budget, "turbo"))
    sets: dict[int, tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]] = {}  # size -> (tokens, trajectories)
    for size, share, chunk in ((256, 0.75, 1536), (512, 0.25, 384)):
        captions_all, states = [], []
        total = int(budget.turbo_trajectories * share)
        for start in range(0, total, chunk):
            scenes = [sample_scene(rng, exclude, mix=budget.layout_mix) for _ in range(min(chunk, total - start))]
            captions = [scene.caption for scene in scenes]
            seed = 31 + start + size
            states.append(compiled_teacher.run(teacher_trajectories, pipe, teacher, captions, size, device, seed))
            captions_all += captions
        sets[size] = (tokens(captions_all), torch.cat(states))
        log.info("turbo: %d teacher trajectories at %d² (%.0f s)", total, size, time.perf_counter() - clock)
    trajectory_seconds = time.perf_counter() - clock

    # 2. The student, from Raw's weights, learns each of Turbo's 8 steps in one step, unguided.
    peak = 2e-4
    optimizer = torch.optim.AdamW(student.parameters(), lr=peak, weight_decay=0.0, betas=(0.9, 0.99))
    ema = Ema(student, EMA_DECAY)
    blocks = CompiledBlocks(student, compiles(budget, "turbo"))
    sigmas = turbo_sigmas().to(device)
    minutes = (budget.minutes or {}).get("turbo")
    watch = Stopwatch(
        "turbo", minutes and max(minutes - trajectory_seconds / 60, 0.5), budget.turbo_steps, budget.profile
    )
    losses = LossLog("turbo")
    for step in watch.steps():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, watch.total, peak, warmup=100)
        size, count = resolution(rng, step, budget.turbo_batch)
        (ids, masks), states = sets[size]
        index = torch.randint(len(states), (count,), device=device)
        i = torch.randint(TURBO_STEPS, (count,), device=device)
        current = states[index, i].float()
        following = states[index, i + 1].float()
        high, low = sigmas[i].view(-1, 1, 1), sigmas[i + 1].view(-1, 1, 1)
        target = (following - current) / (low - high)
        with torch.no_grad(), bf16(device):
            embeds, mask = tokens.hidden_states(ids[index], masks[index])

        optimizer.zero_grad(set_to_none=True)
        loss = blocks.run(distillation_loss, student, current, target, embeds, mask, sigmas[i], size)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        ema.update(student, step)
        losses.add(step, loss, watch.seconds)
    save_transformer(ema.model, work / "turbo_transformer.safetensors")
    return {
        "trajectories": budget.turbo_trajectories,
        "trajectory_seconds": round(trajectory_seconds, 1),
        "batch": budget.turbo_batch,
        "peak_lr": peak,
        "compiled": blocks.enabled and compiled_teacher.enabled,
        "steps": watch.total,
        "seconds": round(watch.seconds, 1),
        "final_loss": losses.final(200),
    }


# ----------------------------------------------------------------------------------------------- stage: style LoRA
LORA_RANK = 16
LORA_FILE = "pixel-style.safetensors"  # listed in the app as demo/pixel-style (studio.runtime.lora_library)
# The single-stream blocks' projections, as diffusers' Krea 2 LoRA training script targets them.
LORA_TARGETS = r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0)|ff\.(gate|up|down))"


def train_lora(work: Path, budget: Budget, device: torch.device) -> dict:
    """A style LoRA on Raw, as Krea advises ("train on Raw, run on Turbo"): the pixel mosaic that the base model never
    draws, learnt from mosaic pictures under the base captions (which never name it), so that the LoRA's effect is
    the style alone. The app's LoRA tests measure it on both checkpoints."""
    from diffusers import Krea2Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(40)
    rng = random.Random(40)
    vae, stats = load_vae(work, device)
    tokenizer, text_encoder = load_text_side(work, device)
    transformer = load_transformer(work / "raw_transformer.safetensors", device).requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    transformer.train()
    pipe = make_pipeline(vae, text_encoder, tokenizer, transformer, is_distilled=False)
    tokens = Tokens(pipe, device)
    clock = time.perf_counter()
    encoder = LatentEncoder(vae, stats, device, Compiled(compiles(budget, "lora")))
    pool = LatentPool(rng, held_out_triples(), encoder, tokens, {256: budget.lora_pool}, device, style="pixel")
    pool_seconds = time.perf_counter() - clock
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    peak = 1e-3
    optimizer = torch.optim.AdamW(parameters, lr=peak, weight_decay=0.0, betas=(0.9, 0.99))
    minutes = (budget.minutes or {}).get("lora")
    watch = Stopwatch("lora", minutes and max(minutes - pool_seconds / 60, 0.5), budget.lora_steps, budget.profile)
    losses = LossLog("lora")
    for step in watch.steps():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, watch.total, peak, warmup=50)
        x0, ids, mask, _, _ = pool.sample(256, budget.lora_batch, CAPTION_DROPOUT)
        noise = torch.randn_like(x0)
        sigma = training_sigmas(x0.shape[1], len(x0), device).view(-1, 1, 1)
        optimizer.zero_grad(set_to_none=True)
        loss = flow_matching_loss(tokens, transformer, x0, noise, sigma, ids, mask, 256)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.add(step, loss, watch.seconds)
    layers = {k: v.detach().to("cpu", torch.bfloat16) for k, v in get_peft_model_state_dict(transformer).items()}
    Krea2Pipeline.save_lora_weights(work / "lora", transformer_lora_layers=layers, weight_name=LORA_FILE)
    return {
        "rank": LORA_RANK,
        "pool": budget.lora_pool,
        "pool_seconds": round(pool_seconds, 1),
        "batch": budget.lora_batch,
        "peak_lr": peak,
        "steps": watch.total,
        "seconds": round(watch.seconds, 1),
        "final_loss": losses.final(200),
    }


# ----------------------------------------------------------------------------------------------- stage 4: export
def export(work: Path, out: Path) -> dict:
    """The real repos' layouts, in bf16 (the app loads them in fp32 on the CPU, bf16 on a GPU)."""
    cpu = torch.device("cpu")
    vae, stats = load_vae(work, cpu)
    tokenizer, text_encoder = load_text_side(work, cpu)
    turbo = load_transformer(work / "turbo_transformer.safetensors", cpu)
    raw = load_transformer(work / "raw_transformer.safetensors", cpu)
    widths = {"text encoder": text_encoder.config.text_config.hidden_size}
    widths |= {name: model.config.text_hidden_dim for name, model in (("Turbo", turbo), ("Raw", raw))}
    if len(set(widths.values())) > 1:  # e.g. a new --text-width Raw beside an imported Turbo: it would not draw
        raise SystemExit(f"the work folder's text widths differ ({widths}): run the stages after raw (turbo) first")
    pipe = make_pipeline(vae, text_encoder, tokenizer, turbo, is_distilled=True)
    pipe.to(torch.bfloat16)
    raw.to(torch.bfloat16)
    turbo_dir, raw_dir = out / TURBO_FOLDER, out / RAW_FOLDER
    pipe.save_pretrained(turbo_dir)
    raw.save_pretrained(raw_dir / "transformer")
    (turbo_dir / "vae" / LATENT_RGB_FILE).write_text(
        json.dumps({"factors": stats["rgb_factors"], "bias": stats["rgb_bias"]}, indent=1) + "\n"
    )
    if (work / "lora" / LORA_FILE).exists():  # the style LoRA, beside the checkpoints it was trained for
        (out / "loras").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "lora" / LORA_FILE, out / "loras" / LORA_FILE)
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))}
    return {"files": sizes, "total_mb": round(sum(sizes.values()) / 1e6, 2)}


def import_export(out: Path, work: Path) -> dict:
    """Export's inverse: the work folder's files from exported checkpoints (bf16 on disk, fp32 in the work folder, as
    the stages save them), loaded through the same `from_pretrained` the app uses."""
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel
    from transformers import AutoTokenizer

    turbo_dir, raw_dir = out / TURBO_FOLDER, out / RAW_FOLDER
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKLQwenImage.from_pretrained(turbo_dir / "vae")
    rgb = json.loads((turbo_dir / "vae" / LATENT_RGB_FILE).read_text())
    stats = {"mean": list(vae.config.latents_mean), "std": list(vae.config.latents_std)}
    stats |= {"rgb_factors": rgb["factors"], "rgb_bias": rgb["bias"]}
    save_file(fp32(vae), work / "vae.safetensors")
    (work / "vae.json").write_text(json.dumps(stats))
    shutil.copytree(turbo_dir / "tokenizer", work / "tokenizer", dirs_exist_ok=True)  # as is: a load+save adds keys
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    text_encoder = type(build_text_encoder(len(tokenizer))).from_pretrained(turbo_dir / "text_encoder")
    save_file(fp32(text_encoder), work / "text_encoder.safetensors")
    for name, folder in (("turbo", turbo_dir), ("raw", raw_dir)):
        transformer = Krea2Transformer2DModel.from_pretrained(folder / "transformer")
        save_transformer(transformer, work / f"{name}_transformer.safetensors")
    if (out / "loras" / LORA_FILE).exists():
        (work / "lora").mkdir(exist_ok=True)
        shutil.copyfile(out / "loras" / LORA_FILE, work / "lora" / LORA_FILE)
    return {"from": str(out), "files": sorted(p.name for p in work.iterdir())}


def key_values(text: str, convert: Callable[[str], float], usage: str) -> dict[str, float]:
    """`raw=7,turbo=5` -> {"raw": 7.0, "turbo": 5.0} (`convert` each value; "" -> {}); a part without one '=', a value
    `convert` refuses or a name given twice stops with `usage` instead of a traceback."""
    try:
        pairs = [part.split("=") for part in text.split(",") if part]
        values = {name.strip(): convert(value) for name, value in pairs}  # a part without one '=' fails to unpack
    except ValueError:
        raise SystemExit(usage) from None
    if len(values) != len(pairs):
        raise SystemExit(usage)
    return values


def layout_mix(text: str) -> dict[str, float] | None:
    """`--mix single=0.4,count=0.3,relation=0.3` -> the shares (None for the default `LAYOUT_MIX`); every layout
    named once, the shares summing to 1."""
    if not text:
        return None
    usage = f"--mix names {', '.join(LAYOUT_MIX)} once each as name=share, shares >= 0 summing to 1: got {text!r}"
    mix = key_values(text, float, usage)
    if set(mix) != set(LAYOUT_MIX) or any(share < 0 for share in mix.values()) or abs(sum(mix.values()) - 1) > 1e-6:
        raise SystemExit(usage)
    return mix


POOL_SIZES = range(64, 513, 32)  # picture sizes Raw's pool takes (the VAE's 8x and the transformer's 2x2 patches
# need a multiple of 16; steps of 32 are enough for the sizes worth trying)


def raw_pool(text: str) -> dict[int, int]:
    """`--pool 49152,8192` (pictures at 256² and 512²) or `--pool 128=65536,256=16384` -> {size: pictures}."""
    usage = f"--pool takes N256,N512 or size=pictures pairs, sizes in 64..512 in steps of 32: got {text!r}"
    if "=" not in text:
        try:
            pool = dict(zip((256, 512), map(int, text.split(",")), strict=True))
        except ValueError:
            raise SystemExit(usage) from None
        if any(count < 0 for count in pool.values()):
            raise SystemExit(usage)
        return pool
    pool = {int(size): int(count) for size, count in key_values(text, int, usage).items() if size.isdigit()}
    if len(pool) != len(text.split(",")) or any(s not in POOL_SIZES or n < 0 for s, n in pool.items()):
        raise SystemExit(usage)
    return pool


def size_mix(text: str) -> dict[int, float] | None:
    """`--size-mix 128=0.7,256=0.3` -> {128: 0.7, 256: 0.3}: shares >= 0 summing to 1 (None: `resolution`'s default)."""
    if not text:
        return None
    usage = f"--size-mix takes size=share pairs, shares >= 0 summing to 1: got {text!r}"
    mix = {int(size): share for size, share in key_values(text, float, usage).items() if size.isdigit()}
    shares = mix.values()
    if len(mix) != len(text.split(",")) or any(share < 0 for share in shares) or abs(sum(shares) - 1) > 1e-6:
        raise SystemExit(usage)
    return mix


def transformer_shape(text: str) -> tuple[int, int]:
    """`--transformer 256x6` -> (256, 6): width (a multiple of 64) and blocks."""
    usage = f"--transformer takes WIDTHxBLOCKS, the width a multiple of 64 (e.g. 256x6): got {text!r}"
    try:
        width, layers = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(usage) from None
    if width <= 0 or width % 64 or layers <= 0:
        raise SystemExit(usage)
    return width, layers


STAGES = {"vae": train_vae, "raw": train_raw, "turbo": train_turbo, "lora": train_lora}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("artifacts/demo-train"), help="intermediate results")
    parser.add_argument("--out", type=Path, default=Path("demo/checkpoints"), help="where export writes (import reads)")
    parser.add_argument("--stages", nargs="+", default=["vae", "raw", "turbo", "lora", "export"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", default="", help="time caps per stage, e.g. vae=2,raw=7,turbo=5")
    parser.add_argument("--steps", default="", help="step counts per stage, e.g. raw=9000,turbo=3000")
    parser.add_argument("--batch", default="", help="batch sizes at 256² per stage, e.g. raw=1024,turbo=1024")
    parser.add_argument(
        "--pool", default="49152,8192", help="Raw's latent pool: pictures at 256² and at 512², or per size: 128=N,256=M"
    )
    parser.add_argument("--size-mix", default="", help="Raw: share of the steps per size, e.g. 128=0.7,256=0.3")
    parser.add_argument("--mix", default="", help="layout shares, e.g. single=0.4,count=0.3,relation=0.3")
    parser.add_argument("--raw-lr", type=float, default=Budget.raw_lr, help="Raw's peak learning rate")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the blocks (on GPUs)")
    parser.add_argument("--eager", nargs="+", default=[], choices=sorted(STAGES), help="stages run without compile")
    parser.add_argument("--raw-round", type=int, default=0, help="continue Raw from the last round (1, 2, ...)")
    parser.add_argument("--trajectories", type=int, default=Budget.turbo_trajectories, help="for Turbo")
    parser.add_argument("--probe-every", type=int, default=0, help="Raw: score held-out prompts every N steps")
    parser.add_argument(
        "--transformer", help="a from-scratch Raw's width x blocks (default 256x6, the committed shape), e.g. 192x6"
    )
    parser.add_argument(
        "--text-width", type=int, help=f"a from-scratch Raw's text encoder width (default {TEXT_HIDDEN})"
    )
    parser.add_argument(
        "--structure-loss", type=float, default=0.0,
        help="Raw: weight of the caption-structure objective on the text side (CaptionStructure; 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--shape-map-loss", type=float, default=0.0,
        help="Raw: weight of the objective asking each image token which shape kind it shows (ShapeMaps; 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--colour-map-loss", type=float, default=0.0,
        help="Raw, with --shape-map-loss: weight of its read-out of each image token's palette colour (0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--freeze-text-encoder", action="store_true",
        help="a later Raw round (--raw-round N) keeps the text encoder as it is: a Turbo distilled on it stays valid",
    )  # fmt: skip
    parser.add_argument(
        "--zero-init", action="store_true",
        help="a from-scratch Raw starts each block as the identity and its output at zero (adaLN-Zero, as in DiT)",
    )  # fmt: skip
    parser.add_argument(
        "--vae-recolour", type=float, default=0.0,
        help="VAE: the share of its pictures in random colours, so uploaded pictures keep theirs (0 to 1)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="profile a few steps per stage (and stop each there)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything (checks the script on a CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the VAE's convolutions run at a few fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    budget = Budget(
        minutes=key_values(args.minutes, float, f"--minutes takes stage=minutes pairs: got {args.minutes!r}"),
        raw_pool=raw_pool(args.pool),
        raw_size_mix=size_mix(args.size_mix),
        layout_mix=layout_mix(args.mix),
        raw_round=args.raw_round,
        raw_lr=args.raw_lr,
        compile=device.type == "cuda" if args.compile is None else args.compile,
        eager=tuple(args.eager),
        turbo_trajectories=args.trajectories,
        profile=args.profile,
        probe_every=args.probe_every,
        transformer=transformer_shape(args.transformer or "256x6"),
        text_width=TEXT_HIDDEN if args.text_width is None else args.text_width,
        structure_weight=args.structure_loss,
        freeze_text_encoder=args.freeze_text_encoder,
        zero_init=args.zero_init,
        shape_map_weight=args.shape_map_loss,
        colour_map_weight=args.colour_map_loss,
        vae_recolour=args.vae_recolour,
    )
    if not 0 <= args.vae_recolour <= 1:
        raise SystemExit(f"--vae-recolour takes a share from 0 to 1: got {args.vae_recolour}")
    if args.vae_recolour and "vae" not in args.stages:
        raise SystemExit("--vae-recolour sets how the VAE trains (--stages vae)")
    if args.freeze_text_encoder and not args.raw_round:
        raise SystemExit("--freeze-text-encoder is for a later Raw round (--raw-round N): a from-scratch one trains it")
    weights = (
        ("--structure-loss", args.structure_loss), ("--shape-map-loss", args.shape_map_loss),
        ("--colour-map-loss", args.colour_map_loss),
    )  # fmt: skip
    for flag, weight in weights:
        if not (math.isfinite(weight) and weight >= 0):
            raise SystemExit(f"{flag} takes a weight >= 0: got {weight}")
    if args.colour_map_loss and not args.shape_map_loss:
        raise SystemExit("--colour-map-loss is a second read-out of --shape-map-loss's: give both")
    if (args.structure_loss or args.shape_map_loss or args.freeze_text_encoder) and "raw" not in args.stages:
        raise SystemExit(
            "--structure-loss, --shape-map-loss and --freeze-text-encoder set how Raw trains (--stages raw)"
        )
    for flag, given in (("--transformer", args.transformer), ("--text-width", args.text_width)):
        if given is not None and ("raw" not in args.stages or args.raw_round):  # later ones read it from the weights
            raise SystemExit(f"{flag} sets the shape of a from-scratch Raw (--stages raw, no --raw-round)")
    if args.zero_init and ("raw" not in args.stages or args.raw_round):  # a later round starts from trained weights
        raise SystemExit("--zero-init sets how a from-scratch Raw starts (--stages raw, no --raw-round)")
    drawn = sorted(size for size, count in budget.raw_pool.items() if count > 0)
    if not drawn:
        raise SystemExit(f"--pool draws no pictures: {args.pool!r}")
    if budget.raw_size_mix is None and (256 not in drawn or not set(drawn) <= {256, 512}):
        raise SystemExit(f"--pool draws {drawn}: sizes besides 256 and 512 (or no 256) need --size-mix to say how many "
                         "of Raw's steps each takes (without it, 256², a fifth at 512²)")  # fmt: skip
    if budget.raw_size_mix is not None:
        if "raw" not in args.stages:
            raise SystemExit("--size-mix sets how Raw trains (--stages raw)")
        shared = sorted(size for size, share in budget.raw_size_mix.items() if share > 0)
        if shared != drawn:
            raise SystemExit(f"--size-mix must share Raw's steps over exactly the sizes --pool draws: {drawn}, not "
                             f"{shared}")  # fmt: skip
    if budget.text_width <= 0 or budget.text_width % 32:
        raise SystemExit(f"--text-width takes a positive multiple of 32: got {args.text_width}")
    for stage, batch in key_values(args.batch, int, f"--batch takes stage=size pairs: got {args.batch!r}").items():
        setattr(budget, f"{stage}_batch", batch)
    for stage, steps in key_values(args.steps, int, f"--steps takes stage=steps pairs: got {args.steps!r}").items():
        setattr(budget, f"{stage}_steps", steps)
    if args.smoke:
        budget = Budget(
            vae_steps=4, vae_batch=2, raw_steps=4, raw_batch=4, raw_round=args.raw_round,
            raw_pool={size: (16 if size <= 256 else 4) if count else 0 for size, count in budget.raw_pool.items()},
            raw_size_mix=budget.raw_size_mix,
            turbo_trajectories=8, turbo_steps=4, turbo_batch=4, minutes=budget.minutes, stat_pictures=64,
            round_trip_pictures=16, lora_steps=4, lora_batch=4, lora_pool=16, layout_mix=budget.layout_mix,
            compile=budget.compile, eager=budget.eager, profile=budget.profile, probe_every=budget.probe_every,
            transformer=budget.transformer, text_width=budget.text_width, structure_weight=budget.structure_weight,
            freeze_text_encoder=budget.freeze_text_encoder, zero_init=budget.zero_init,
            shape_map_weight=budget.shape_map_weight, colour_map_weight=budget.colour_map_weight,
            vae_recolour=budget.vae_recolour,
        )  # fmt: skip
    if "raw" in args.stages and largest_batch(budget) * TEXT_TOKENS > MAX_TEXT_SEQUENCES:
        pictures = largest_batch(budget)
        raise SystemExit(
            f"a Raw step of {pictures} pictures would run its text fusion over {pictures * TEXT_TOKENS:,} sequences in "
            f"one attention call, past the {MAX_TEXT_SEQUENCES:,} GPU attention kernels take (session n's 128² batch "
            f"of 2,048 crashed): a smaller --batch raw=N"
        )
    args.work.mkdir(parents=True, exist_ok=True)
    report_path = args.work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for stage in args.stages:
        log.info("stage %s", stage)
        if stage == "export":
            report[stage] = export(args.work, args.out)
        elif stage == "import":
            report[stage] = import_export(args.out, args.work)
        else:
            report[stage] = STAGES[stage](args.work, budget, device)
            (report[stage][-1] if isinstance(report[stage], list) else report[stage])["device"] = device_name
        report_path.write_text(json.dumps(report, indent=1))
        log.info("%s: %s", stage, report[stage])


if __name__ == "__main__":
    main()
