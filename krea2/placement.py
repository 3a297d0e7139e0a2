"""Today's placements, carried out: all weights on the GPU, all in CPU memory and streamed in per use (offload), or all
on the CPU. Which one (or which small-GPU plan, placed by `residency.py`) is chosen in `plans.py`."""

from __future__ import annotations

from typing import Literal

import torch

Placement = Literal["gpu", "offload", "cpu"]
PLACEMENTS = ("auto", "gpu", "offload", "cpu")


def unique_modules(pipes: list) -> list[torch.nn.Module]:
    """Each model once, even when several pipelines share it (Raw and Turbo share encoder and VAE)."""
    seen: dict[int, torch.nn.Module] = {}
    for pipe in pipes:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                seen.setdefault(id(module), module)
    return list(seen.values())


def apply_placement(modules: list[torch.nn.Module], placement: Placement, device: torch.device) -> None:
    """Move (or hook) each module for `placement`; a module already placed is left alone, so placing twice is free."""
    if placement in ("cpu", "gpu"):
        target = torch.device("cpu") if placement == "cpu" else device
        for module in modules:
            if any(not _on(parameter.device, target) for parameter in module.parameters()):
                module.to(target)
    else:
        # Group offloading hooks live on the modules themselves, so a module shared by Raw and Turbo is hooked once
        # and works from both pipelines (model-level CPU offload chains hooks per pipeline and breaks on sharing).
        from diffusers.hooks import apply_group_offloading

        for module in modules:
            if hasattr(module, "_diffusers_hook"):  # hooked at the first placement
                continue
            apply_group_offloading(
                module,
                onload_device=device,
                offload_type="leaf_level",
                use_stream=device.type == "cuda",  # streams exist on CUDA only (the CPU tests offload CPU to CPU)
                record_stream=device.type == "cuda",
            )


def _on(actual: torch.device, target: torch.device) -> bool:
    """Whether a tensor on `actual` is on `target` ("cuda" means the current GPU)."""
    if actual.type != target.type:
        return False
    return target.index is None or actual.index == target.index
