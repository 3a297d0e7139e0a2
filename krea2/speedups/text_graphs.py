"""The text encoder replayed from CUDA graphs, one graph per padded prompt length.

Encoding a prompt with the 4B-parameter Qwen3-VL text model is launch-bound: for a prompt's ~100 tokens, launching 36
layers of small kernels one by one takes many times longer than reading the weights once (bench/NOTES.md). A CUDA
graph launches the whole captured sequence of kernels at once.

A graph has fixed shapes, so the tokens are padded on the right to a multiple of `bucket`. The encoder is causal (a
token attends to itself and earlier tokens only) and a token's position does not depend on what follows it, so the
padding changes none of the prompt's hidden states; its rows are cut off afterwards. The GEMMs see a few more rows,
which can change their summation order, not their math.

`text_features` is the eager computation both paths share; `TextEncoderGraphs` captures it lazily per length bucket and
checks each new graph against the eager result once before trusting it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import error_summary
from .cuda_graphs import capture, relative_l2

log = logging.getLogger(__name__)

# Relative L2 of a new graph against eager. A wrong capture (stale input, wrong positions) lands near 1; the bound sits
# above the bf16 summation-order noise of the full-size encoder (bench/NOTES.md, third session, measured it).
CHECK_TOLERANCE = 0.05


def text_features(text_encoder, input_ids: torch.Tensor, select_layers: Sequence[int]) -> torch.Tensor:
    """(1, tokens) ids -> (1, tokens, layers, hidden): the selected layers' hidden states, as Krea 2 reads them.
    Positions are 0..tokens-1, as stock computes them for a prompt without padding (the cumsum of its mask)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(3, 1, -1)
    outputs = text_encoder(input_ids=input_ids, position_ids=positions, output_hidden_states=True, use_cache=False)
    return torch.stack([outputs.hidden_states[i] for i in select_layers], dim=2)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph | None
    input_ids: torch.Tensor  # static input the graph reads
    output: torch.Tensor  # static output the graph writes


class TextEncoderGraphs:
    """`text_features` for any prompt length, replayed from a CUDA graph per bucket of `bucket` tokens.

    Without CUDA (tests) it runs the same padded computation eagerly, so everything but the capture is exercised."""

    def __init__(self, text_encoder, select_layers: Sequence[int], bucket: int = 64, pad_id: int = 0) -> None:
        self.text_encoder = text_encoder
        self.select_layers = tuple(select_layers)
        self.bucket = bucket
        self.pad_id = pad_id
        self.captured: dict[int, _Captured] = {}
        self.disabled_reason: str | None = None  # set when a capture failed or disagreed: eager from then on
        # Set while the manager compiles in a background thread (its warm-up's first stage): no new capture then,
        # beside another thread's GPU work and inductor's benchmarking; graphs captured already still replay.
        self.paused = False

    def padded_length(self, length: int) -> int:
        return -(-length // self.bucket) * self.bucket

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.disabled_reason is not None or input_ids.shape[0] != 1:
            return text_features(self.text_encoder, input_ids, self.select_layers)
        entry = self.captured.get(self.padded_length(input_ids.shape[1]))
        if entry is None:
            if self.paused:
                return text_features(self.text_encoder, input_ids, self.select_layers)
            return self._capture_checked(input_ids)
        # A copy: the static output is overwritten by the next replay, and callers cache what they get.
        return self._run(entry, input_ids).clone()

    def _run(self, entry: _Captured, input_ids: torch.Tensor) -> torch.Tensor:
        """Pad `input_ids` into the static input, run, and return the prompt's rows of the static output (a view)."""
        length = input_ids.shape[1]
        entry.input_ids.fill_(self.pad_id)
        entry.input_ids[:, :length].copy_(input_ids)
        if entry.graph is not None:
            entry.graph.replay()
        else:
            entry.output.copy_(text_features(self.text_encoder, entry.input_ids, self.select_layers))
        return entry.output[:, :length]

    def _capture_checked(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Capture the graph of this prompt's bucket and check it once against eager on this very prompt. Returns the
        prompt's features: the graph's, or the eager ones when the capture failed or disagreed."""
        padded = self.padded_length(input_ids.shape[1])
        reference = text_features(self.text_encoder, input_ids, self.select_layers)
        try:
            entry = self._capture(padded, input_ids.device)
        except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager, say why once
            self._disable(f"capture failed ({error_summary(error)})")
            return reference
        features = self._run(entry, input_ids).clone()
        error = relative_l2(features, reference)
        if not error < CHECK_TOLERANCE:
            self._disable(f"graph disagreed with eager (relative L2 {error:.3g})")
            return reference
        self.captured[padded] = entry
        log.info("Text encoder: %s for %d tokens", "CUDA graph captured" if entry.graph else "padded", padded)
        return features

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self.captured.clear()  # never replayed again: free the graphs' memory
        log.warning("Text encoder CUDA graphs off: %s", reason)

    @torch.inference_mode(False)  # normal static buffers, whichever mode the first call came in (see denoiser_graphs)
    @torch.no_grad()  # inference_mode(False) alone turns grad mode back on
    def _capture(self, padded: int, device: torch.device) -> _Captured:
        input_ids = torch.full((1, padded), self.pad_id, dtype=torch.long, device=device)
        if device.type != "cuda":
            output = text_features(self.text_encoder, input_ids, self.select_layers)
            return _Captured(None, input_ids, torch.empty_like(output))
        graph, output = capture(
            lambda: text_features(self.text_encoder, input_ids, self.select_layers), device, warmups=2
        )
        return _Captured(graph, input_ids, output)
