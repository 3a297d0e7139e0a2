"""Whole transformer calls replayed from CUDA graphs, one graph per input shape.

A compiled fp8 Turbo step at 1024² launches ~600 kernels (28 blocks of GEMMs, fused Triton kernels and attention, plus
the embeddings and the final layer). Launched one by one, the GPU idles a few microseconds between kernels (measured
in bench/NOTES.md). A graph launches the captured sequence at once.

A graph has fixed shapes and addresses, so the inputs are copied into static tensors and each shape (batch, prompt
length, image size) gets its own graph, captured on the second call with that shape: the first runs eagerly, so that
torch.compile compiles (or generalises) outside any capture. All graphs share one memory pool; generations never run
at the same time (the manager's lock), and each replay's output is copied out before the next. The wrapper's first
capture is checked once against eager on the same inputs; a capture that fails or disagrees turns the graphs off and the
transformer runs eagerly from then on.

Anything that changes the transformer (fp8, the attention processor, compilation, the step cache) must drop its graphs
first: `speedups.apply` does, before its first step, and installs fresh ones as its last. Raw's step cache decides
per call on the CPU whether to skip blocks, which a graph cannot replay, so a transformer with a step cache always runs
eagerly.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from ..errors import error_summary
from ..lru_cache import LRUCache
from .cuda_graphs import capture, relative_l2
from .step_cache import step_cache_of

log = logging.getLogger(__name__)

# A replay runs the very kernels of the eager call on the same inputs; anything but noise (a stale input, a value baked
# in at capture) shows up near 1.
CHECK_TOLERANCE = 1e-3
MAX_GRAPHS = 8  # shapes kept: prompt lengths, sizes and batch sizes in recent use
INPUT_NAMES = ("hidden_states", "encoder_hidden_states", "timestep", "position_ids")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static inputs the graph reads
    output: torch.Tensor  # static output the graph writes


class DenoiserGraphs:
    """Stands in for `transformer.forward`, same signature (install with `install_denoiser_graphs`)."""

    device_types: tuple[str, ...] = ("cuda",)  # where graphs exist (the CPU tests stand in a replayable fake)

    def __init__(self, transformer: nn.Module, pool: tuple | None = None, max_graphs: int = MAX_GRAPHS) -> None:
        self.transformer = transformer
        self.eager = type(transformer).forward.__get__(transformer)  # the class's forward, bound: never this wrapper
        self.pool = pool
        self.graphs: LRUCache[_Captured] = LRUCache(max_graphs)
        self.seen: set[tuple] = set()
        self.checked = False
        self.disabled_reason: str | None = None
        # Set while a user's request runs during the compile warm-up: its calls may be eager, and a graph captured
        # from them would replay eager kernels for that shape from then on.
        self.paused = False

    def __call__(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        position_ids: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        inputs = dict(zip(INPUT_NAMES, (hidden_states, encoder_hidden_states, timestep, position_ids), strict=True))
        graphable = (
            self.disabled_reason is None
            and not self.paused
            and encoder_attention_mask is None  # PAD-free prompts: a mask only comes with padded batches
            and not attention_kwargs
            and hidden_states.device.type in self.device_types
            and not torch.is_grad_enabled()
            and step_cache_of(self.transformer) is None
        )
        if not graphable:
            return self.eager(
                **inputs, encoder_attention_mask=encoder_attention_mask, attention_kwargs=attention_kwargs,
                return_dict=return_dict,
            )  # fmt: skip
        key = tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in inputs.items())
        if key in self.seen:
            output = self._replay(key, inputs)
        else:
            self.seen.add(key)  # first call with this shape: eager (torch.compile may compile for it)
            output = self.eager(**inputs, return_dict=False)[0]
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def _replay(self, key: tuple, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        entry = self.graphs.get_or_compute(key, lambda: self._capture(inputs))
        if entry is None:  # the capture failed or disagreed: eager from now on
            self.graphs.clear()
            return self.eager(**inputs, return_dict=False)[0]
        # A graph captured under inference_mode has inference tensors as its static inputs, which only inference_mode
        # may write into; a replay from a no_grad caller (the pipeline) raised without this (the LoRA benchmark hit it
        # on a GPU). Capturing with normal buffers instead would make torch.compile recompile inside the capture.
        inference = entry.inputs["hidden_states"].is_inference()
        with torch.inference_mode() if inference else contextlib.nullcontext():
            for name, tensor in inputs.items():
                entry.inputs[name].copy_(tensor)
        entry.graph.replay()
        return entry.output.clone()  # the static output is overwritten by the next replay (CFG's second call)

    def _capture(self, inputs: dict[str, torch.Tensor]) -> _Captured | None:
        static = {name: tensor.clone() for name, tensor in inputs.items()}
        try:
            graph, output = capture(lambda: self.eager(**static, return_dict=False)[0], static["hidden_states"].device,
                                    pool=self.pool)  # fmt: skip
        except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager, say why once
            return self._disable(f"capture failed ({error_summary(error)})")
        if not self.checked:  # the first capture: its replay against eager, on the same inputs
            graph.replay()
            reference = self.eager(**static, return_dict=False)[0]
            if not (error := relative_l2(output, reference)) < CHECK_TOLERANCE:
                return self._disable(f"graph disagreed with eager (relative L2 {error:.3g})")
            self.checked = True
        log.info("Denoiser: CUDA graph captured for %s", {n: tuple(t.shape) for n, t in static.items()})
        return _Captured(graph, static, output)

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        log.warning("Denoiser CUDA graphs off: %s", reason)
        return None


def install_denoiser_graphs(transformer: nn.Module, pool: tuple | None = None) -> DenoiserGraphs:
    """Replace `transformer.forward` by a fresh `DenoiserGraphs` (dropping any earlier one's graphs). Module hooks
    (PAD-free text positions) still run first: `nn.Module.__call__` calls them before `forward`."""
    graphs = DenoiserGraphs(transformer, pool)
    transformer.forward = graphs
    return graphs


def denoiser_graphs_of(transformer: nn.Module) -> DenoiserGraphs | None:
    forward = transformer.__dict__.get("forward")
    return forward if isinstance(forward, DenoiserGraphs) else None


def drop_denoiser_graphs(transformer: nn.Module) -> None:
    """Back to the eager forward; the graphs (and their kernels' addresses) are released."""
    if denoiser_graphs_of(transformer) is not None:
        del transformer.forward
