"""Hugging Face ZeroGPU support: used only when the `spaces` package is importable on a ZeroGPU Space.

ZeroGPU attaches a GPU only inside functions decorated with `spaces.GPU`, wants the weights moved to CUDA at
start-up in the main process, gives 48 GB, and does not support torch.compile. So there: load synchronously,
everything resident, fp8 transformers (both checkpoints fit in ~35 GB), no compile, and run each generation
stream inside `spaces.GPU`.
"""

from __future__ import annotations

import os
from types import ModuleType

from .runtime import EngineSettings

GPU_SECONDS_PER_CALL = 120  # a Raw + Turbo comparison at 1 MP fits comfortably


def zero_gpu() -> ModuleType | None:
    if not os.environ.get("SPACES_ZERO_GPU"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def adapt_settings(settings: EngineSettings) -> EngineSettings:
    settings.compile = False
    settings.fp8 = True
    settings.placement = "gpu"
    # Outside a ZeroGPU allocation no kernel can run: FlashAttention-4's start-up probe would need one, and fp8
    # quantisation happens on the CPU before the weights move to CUDA.
    settings.attention = "sdpa"
    settings.prepare_on_cpu = True
    return settings


def wrap_service(service, spaces: ModuleType) -> None:
    """Run every generation stream (generate, compare, API) inside a ZeroGPU allocation."""
    service.stream = spaces.GPU(duration=GPU_SECONDS_PER_CALL)(service.stream)
