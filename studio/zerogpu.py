"""Hugging Face ZeroGPU support: used only when the `spaces` package is importable on a ZeroGPU Space.

ZeroGPU attaches a GPU only inside functions decorated with `spaces.GPU`, wants the weights moved to CUDA at
start-up in the main process, gives 48 GB, and does not support torch.compile. So there: load synchronously,
everything resident, fp8 transformers (both checkpoints fit in ~35 GB), no compile, and run each generation
stream inside `spaces.GPU`.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from .settings import Settings

GPU_SECONDS_PER_CALL = 120  # a Raw + Turbo comparison at 1 MP fits comfortably


def zero_gpu(settings: Settings) -> ModuleType | None:
    """The `spaces` module on a ZeroGPU Space (SPACES_ZERO_GPU set and `spaces` importable), else None."""
    if not settings.zero_gpu:
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def adapt_settings(settings: Settings) -> Settings:
    """The settings ZeroGPU needs. Outside a ZeroGPU allocation no kernel can run: FlashAttention-4's start-up probe
    would need one, hence SDPA, and the manager is built with `prepare_on_cpu` (fp8 quantisation on the CPU before the
    weights move to CUDA)."""
    return replace(settings, compile=False, fp8=True, placement="gpu", attention="sdpa")


def wrap_service(service, spaces: ModuleType) -> None:
    """Run every generation stream (generate, compare, API) inside a ZeroGPU allocation."""
    service.stream = spaces.GPU(duration=GPU_SECONDS_PER_CALL)(service.stream)
