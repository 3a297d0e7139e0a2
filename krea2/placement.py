"""Where the weights live: all on the GPU when they fit, otherwise in CPU memory and streamed in per use."""

from __future__ import annotations

import logging
from typing import Literal

import torch

Placement = Literal["gpu", "offload", "cpu"]
PLACEMENTS = ("auto", "gpu", "offload", "cpu")
# Activations, the VAE decode at 2048^2 and the CUDA context need room beside the weights.
ACTIVATION_HEADROOM_BYTES = 12 * 1024**3

log = logging.getLogger(__name__)


def unique_modules(pipes: list) -> list[torch.nn.Module]:
    """Each model once, even when several pipelines share it (Raw and Turbo share encoder and VAE)."""
    seen: dict[int, torch.nn.Module] = {}
    for pipe in pipes:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                seen.setdefault(id(module), module)
    return list(seen.values())


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def choose_placement(requested: str, device: torch.device, needed_bytes: int) -> Placement:
    if requested not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if device.type != "cuda":
        return "cpu"
    if requested != "auto":
        return requested  # type: ignore[return-value]
    free, _total = torch.cuda.mem_get_info(device)
    fits = needed_bytes + ACTIVATION_HEADROOM_BYTES <= free
    log.info("Weights %.1f GB, GPU free %.1f GB -> %s", needed_bytes / 1e9, free / 1e9, "gpu" if fits else "offload")
    return "gpu" if fits else "offload"


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
                module, onload_device=device, offload_type="leaf_level", use_stream=True, record_stream=True
            )


def _on(actual: torch.device, target: torch.device) -> bool:
    """Whether a tensor on `actual` is on `target` ("cuda" means the current GPU)."""
    if actual.type != target.type:
        return False
    return target.index is None or actual.index == target.index
