"""Builds a ModelManager from the settings: real checkpoints on a CUDA GPU, demo checkpoints otherwise (or on
--demo). `fast_path_options` is the one place where the speed-up settings become the engine's options."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from krea2.checkpoints import RAW, TURBO
from krea2.compile_cache import CompileCache
from krea2.content_filter import ContentPolicy
from krea2.loading import PipelineLoader
from krea2.lora_library import LoraLibrary
from krea2.manager import ModelManager
from krea2.speedups import FastPathOptions

from .settings import Settings

log = logging.getLogger(__name__)


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
    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason

    if requested == "sdpa" or not cuda:
        return None
    if requested is None:
        reason = flash4_unavailable_reason()
        if reason is not None:
            log.info("Attention: PyTorch SDPA (FlashAttention-4 not used: %s)", reason)
            return None
        return FLASH4
    return requested


def use_compile_cache(settings: Settings, data_dir: Path) -> None:
    """Keep torch.compile's and Triton's kernel caches in the data folder, unless they are set already, so a restart
    (a container with its volume, a Space with persistent storage) warms up from them (bench/NOTES.md has the
    warm-up times). Both libraries read these variables when they first touch their caches, so this must run before
    the first compile; they are the libraries' own variables, hence set in the environment."""
    caches = {
        "TORCHINDUCTOR_CACHE_DIR": settings.inductor_cache_dir or compile_cache_dir(data_dir) / "inductor",
        "TRITON_CACHE_DIR": settings.triton_cache_dir or compile_cache_dir(data_dir) / "triton",
    }
    for name, folder in caches.items():
        os.environ[name] = str(folder)


def compile_cache_dir(data_dir: Path) -> Path:
    """The data folder's compile caches: inductor's and Triton's folders, and torch's artifacts file (mega-cache)."""
    return data_dir / "compile-cache"


LORA_FOLDER = "loras"  # in the data folder, unless KREA2_LORA_DIR names another


DEMO_LORAS = "demo"  # the prefix the demo checkpoints' LoRAs are listed under (`demo/pixel-style`)


def uses_demo(settings: Settings) -> bool:
    """The demo checkpoints run when asked for, or when there is no CUDA GPU to run Krea 2 on."""
    return settings.demo or not torch.cuda.is_available()


def lora_library(settings: Settings, data_dir: Path) -> LoraLibrary:
    """The LoRA folder the settings name, else `loras/` in the data folder. With the demo checkpoints, the LoRAs
    trained for them (their `loras/` folder) are listed too, as `demo/...`, read from where they ship: nothing is
    written to the user's folder, so a folder shared with the real model never holds a demo-only LoRA."""
    from krea2.demo import default_checkpoints_dir

    builtin = {}
    if uses_demo(settings):
        builtin[DEMO_LORAS] = Path(settings.demo_checkpoints or default_checkpoints_dir()) / "loras"
    return LoraLibrary(settings.lora_dir or data_dir / LORA_FOLDER, builtin=builtin)


def build_manager(
    settings: Settings,
    *,
    prepare_on_cpu: bool = False,
    compile_cache_folder: Path | None = None,
    loras: LoraLibrary | None = None,
    content_policy: ContentPolicy | None = None,
    device: str | None = None,
    manager_class: Callable[..., ModelManager] = ModelManager,
) -> ModelManager:
    """`prepare_on_cpu`: fuse/quantise the transformers before they move to the GPU (ZeroGPU: no GPU at start-up).
    `compile_cache_folder`: where torch's compile artifacts are kept between runs (the app's data folder).
    `loras`: the LoRA library requests may name LoRAs from (`lora_library`).
    `content_policy` (studio/safety.py) is applied to every generation; its classifier loads with the checkpoints.
    `device`: the one device of this manager (one worker of several, studio/devices.py); None: the GPU, else the CPU.
    `manager_class`: a ModelManager's kind, e.g. one rank of a context-parallel group (studio/devices.py)."""
    cuda = torch.cuda.is_available()
    demo = uses_demo(settings)
    if demo:
        from krea2.demo import demo_checkpoints

        if not cuda and not settings.demo:
            log.warning("No CUDA GPU found: using the built-in DEMO checkpoints (a miniature Krea 2 drawing shapes).")
        sources = demo_checkpoints(settings.demo_checkpoints)
        dtype = torch.float32 if not cuda else torch.bfloat16
    else:
        sources = {RAW.key: RAW.source(settings.raw), TURBO.key: TURBO.source(settings.turbo)}
        dtype = torch.bfloat16
    options = fast_path_options(settings, cuda=cuda, demo=demo, prepare_on_cpu=prepare_on_cpu)
    # A pre-quantised fp8 file stays fp8 where the fast path runs fp8 anyway (no bf16 round trip).
    loader = PipelineLoader(sources, dtype, shared=None if demo else settings.components, fp8_weights=options.fp8)
    compile_cache = None
    if options.compile and compile_cache_folder is not None:
        compile_cache = CompileCache(compile_cache_folder, device=torch.cuda.get_device_name() if cuda else "cpu")
    return manager_class(
        loader, placement=settings.placement, options=options, demo=demo, compile_cache=compile_cache, loras=loras,
        content_policy=content_policy, device=device, background_compile=settings.background_compile,
    )  # fmt: skip


def fast_path_options(settings: Settings, *, cuda: bool, demo: bool, prepare_on_cpu: bool = False) -> FastPathOptions:
    """The fast path the settings ask for, on by default where it runs (the manager turns the GPU-resident parts off
    again if the weights end up offloaded)."""
    return FastPathOptions(
        compile=cuda and not demo if settings.compile is None else settings.compile and cuda,
        fp8=fp8_supported() and not demo if settings.fp8 is None else settings.fp8 and fp8_supported(),
        attention=None if demo else choose_attention(settings.attention, cuda),
        step_cache=settings.step_cache,
        prepare_on_cpu=prepare_on_cpu,
        # Not with ZeroGPU: its GPU is attached per call, and graphs hold device addresses across calls.
        text_graphs=cuda and not prepare_on_cpu and settings.text_graphs is not False,
        # Captured by the compile warm-up, so only with compile.
        denoiser_graphs=cuda and not prepare_on_cpu and settings.denoiser_graphs is not False,
        lora_masters=settings.lora_masters,
        kernel_tuning=settings.kernel_tuning,
    )
