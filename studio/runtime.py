"""Builds a ModelManager from settings: real checkpoints on a CUDA GPU, demo checkpoints otherwise (or on --demo)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from krea2.checkpoints import RAW, TURBO
from krea2.loading import PipelineLoader
from krea2.manager import FastPathOptions, ModelManager

log = logging.getLogger(__name__)


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class EngineSettings:
    demo: bool = False
    placement: str = "auto"
    raw_source: str | None = None
    turbo_source: str | None = None
    compile: bool | None = None  # None: on where it pays (CUDA)
    fp8: bool | None = None  # None: on where supported (CUDA, compute capability >= 8.9, torchao installed)
    attention: str | None = None  # None: FlashAttention-4 where it runs, else PyTorch SDPA; "sdpa" forces SDPA
    step_cache: float | None = None  # Raw's first-block cache threshold; None = off (changes images)
    prepare_on_cpu: bool = False  # fuse/quantise the transformers before moving them to the GPU (ZeroGPU)
    text_graphs: bool | None = None  # None: the text encoder replays CUDA graphs where it stays on a GPU
    denoiser_graphs: bool | None = None  # None: compiled transformer calls replay CUDA graphs where they stay on a GPU

    @classmethod
    def from_env(cls) -> EngineSettings:
        return cls(
            demo=env_flag("KREA2_DEMO"),
            placement=os.environ.get("KREA2_PLACEMENT", "auto"),
            compile=env_flag("KREA2_COMPILE") if "KREA2_COMPILE" in os.environ else None,
            fp8=env_flag("KREA2_FP8") if "KREA2_FP8" in os.environ else None,
            attention=attention_setting(os.environ.get("KREA2_ATTENTION")),
            step_cache=step_cache_threshold(os.environ.get("KREA2_STEP_CACHE")),
            text_graphs=env_flag("KREA2_TEXT_GRAPHS") if "KREA2_TEXT_GRAPHS" in os.environ else None,
            denoiser_graphs=env_flag("KREA2_DENOISER_GRAPHS") if "KREA2_DENOISER_GRAPHS" in os.environ else None,
        )

    @classmethod
    def from_env_and_args(cls, args) -> EngineSettings:
        """The environment's settings, then the command line's (`--demo`, `--placement`, `--raw`, `--turbo`) on top.
        Raises ValueError with a one-line message for a bad value."""
        settings = cls.from_env()
        settings.demo = settings.demo or args.demo
        settings.placement, settings.raw_source, settings.turbo_source = args.placement, args.raw, args.turbo
        return settings


def step_cache_threshold(text: str | None) -> float | None:
    """KREA2_STEP_CACHE: empty or unset = off, else a threshold >= 0 (e.g. 0.05)."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"KREA2_STEP_CACHE must be a number such as 0.05, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"KREA2_STEP_CACHE must be a finite number >= 0, got {text!r}")
    return value


def attention_setting(text: str | None) -> str | None:
    """KREA2_ATTENTION: unset = automatic, else flash4, cudnn-fp8, sdpa or one of diffusers' attention backend names."""
    if text is None or not text.strip():
        return None
    from diffusers.models.attention_dispatch import AttentionBackendName

    from krea2.attention import KERNEL_NAMES

    choices = [*KERNEL_NAMES, "sdpa", *(name.value for name in AttentionBackendName)]
    if text.strip() not in choices:
        raise ValueError(f"KREA2_ATTENTION must be one of {', '.join(choices)}; got {text!r}")
    return text.strip()


def fp8_supported() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        return False
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def choose_attention(requested: str | None, cuda: bool) -> str | None:
    """The attention the transformers run: FA4 by default where it can run; "sdpa" means PyTorch's own."""
    from krea2.attention import FLASH4, flash4_unavailable_reason

    if requested == "sdpa" or not cuda:
        return None
    if requested is None:
        reason = flash4_unavailable_reason()
        if reason is not None:
            log.info("Attention: PyTorch SDPA (FlashAttention-4 not used: %s)", reason)
            return None
        return FLASH4
    return requested


def use_compile_cache(data_dir: Path) -> None:
    """Keep torch.compile's and Triton's kernel caches in the data folder, unless they are set already, so a restart
    (a container with its volume, a Space with persistent storage) warms up from them. H100, the app's warm-up: 265 and
    421 s on two fresh machines, 70.5 s from a warm cache (bench/results/2026-11-26T11*_gpu-smoke*.log). Both libraries
    read these variables when they first touch their caches, so this must run before the first compile."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir / "compile-cache" / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(data_dir / "compile-cache" / "triton"))


def build_manager(settings: EngineSettings) -> ModelManager:
    cuda = torch.cuda.is_available()
    demo = settings.demo or not cuda
    if demo:
        from krea2.demo import demo_checkpoints

        if not cuda and not settings.demo:
            log.warning("No CUDA GPU found: using the built-in DEMO checkpoints (a miniature Krea 2 drawing shapes).")
        sources = demo_checkpoints()
        dtype = torch.float32 if not cuda else torch.bfloat16
    else:
        sources = {"raw": RAW.source(settings.raw_source), "turbo": TURBO.source(settings.turbo_source)}
        dtype = torch.bfloat16
    options = fast_path_options(settings, cuda=cuda, demo=demo)
    return ModelManager(PipelineLoader(sources, dtype), placement=settings.placement, options=options, demo=demo)


def fast_path_options(settings: EngineSettings, *, cuda: bool, demo: bool) -> FastPathOptions:
    """The fast path the settings ask for, on by default where it runs (the manager turns the GPU-resident parts off
    again if the weights end up offloaded)."""
    return FastPathOptions(
        drop_text_padding=True,
        compile=cuda and not demo if settings.compile is None else settings.compile and cuda,
        fp8=fp8_supported() and not demo if settings.fp8 is None else settings.fp8 and fp8_supported(),
        attention=None if demo else choose_attention(settings.attention, cuda),
        step_cache=settings.step_cache,
        prepare_on_cpu=settings.prepare_on_cpu,
        # Not with ZeroGPU: its GPU is attached per call, and graphs hold device addresses across calls.
        text_graphs=cuda and not settings.prepare_on_cpu and settings.text_graphs is not False,
        # Captured by the compile warm-up, so only with compile.
        denoiser_graphs=cuda and not settings.prepare_on_cpu and settings.denoiser_graphs is not False,
    )
