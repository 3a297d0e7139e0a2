"""What the two CUDA-graph users (the text encoder, text_graphs.py, and the denoiser, denoiser_graphs.py) share:
capturing a function's kernels once, and the error measure their checks use."""

from __future__ import annotations

from collections.abc import Callable

import torch


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.float(), reference.float()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-12))


def capture(
    fn: Callable[[], torch.Tensor], device: torch.device, *, warmups: int = 0, pool: tuple | None = None
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture `fn`'s kernels into a CUDA graph; returns the graph and the static tensor its replays write. `fn` must
    read only tensors that outlive the graph (the caller's static inputs). Nothing is computed until `replay()`.

    `warmups` calls run first on a side stream, as torch.cuda.graphs documents for work whose lazy set-up (cuBLAS,
    cuDNN handles) has not happened yet; callers whose `fn` just ran eagerly pass 0. Graphs that never run at the same
    time may share a memory `pool` (torch.cuda.graph_pool_handle())."""
    if warmups:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmups):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: in a server, another thread's CUDA call (a status query, say) must not spoil this capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = fn()
    return graph, output
