"""GPU speed-ups beyond PAD-free conditioning: regional compilation and fp8 (torchao). Each is a setting.

Both act on the transformer modules in place, so Raw and Turbo each get them once and stay warm together.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import torch

from .request import GenerationRequest

if TYPE_CHECKING:
    from .manager import ModelManager

log = logging.getLogger(__name__)

# Two prompt lengths and the common sizes: after the second distinct shape torch.compile marks the varying
# dimensions dynamic, so later prompts and sizes reuse the compiled blocks instead of recompiling in a user's face.
WARMUP_PROMPTS = ("a photograph of a red fox standing in fresh snow at dawn", "a cat")
WARMUP_SIZES = ((1024, 1024), (1024, 768))


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """fp8 weights and activations, row-wise scales, for the linear layers of the repeated blocks (where ~all the
    FLOPs are). Needs compute capability >= 8.9 and torchao."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def in_blocks(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)


def compile_blocks(transformer) -> None:
    # diffusers' regional compilation: every Krea2TransformerBlock shares one compiled graph, so compiling takes
    # seconds instead of minutes and Raw reuses what Turbo compiled (same block class, weights are inputs).
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)


def compile_and_warm_up(manager: ModelManager, sizes=WARMUP_SIZES, steps: int = 2) -> float:
    """Compile both transformers and run short generations so no user waits for compilation. Returns seconds."""
    start = time.perf_counter()
    for pipe in manager.pipes.values():
        compile_blocks(pipe.transformer)
    for width, height in sizes:
        for prompt in WARMUP_PROMPTS:
            for key, pipe in manager.pipes.items():
                request = GenerationRequest(
                    prompt=prompt, checkpoint=key, steps=steps, width=width, height=height, seed=0,
                    guidance=None if key == "raw" else 0.0,
                )  # fmt: skip
                manager._generate_locked(pipe, request, None, threading.Event())
    seconds = time.perf_counter() - start
    log.info("Compile warm-up done in %.1f s", seconds)
    return seconds
