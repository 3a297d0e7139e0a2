"""GPU speed-ups beyond PAD-free conditioning: fused projections, fp8 (torchao) and regional compilation.

All act on the transformer modules in place, so Raw and Turbo each get them once and stay warm together.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .denoiser_graphs import drop_denoiser_graphs, install_denoiser_graphs
from .request import GenerationRequest
from .vae_decode import use_single_frame_decode

if TYPE_CHECKING:
    from .manager import ModelManager

log = logging.getLogger(__name__)

# Two prompt lengths and the common sizes: after the second distinct shape torch.compile marks the varying
# dimensions dynamic, so later prompts and sizes reuse the compiled blocks instead of recompiling in a user's face.
WARMUP_PROMPTS = ("a photograph of a red fox standing in fresh snow at dawn", "a cat")
WARMUP_SIZES = ((1024, 1024), (1024, 768))


def concat_linears(layers: list[nn.Linear]) -> nn.Linear:
    """One bias-free Linear whose output is the concatenation of `layers`' outputs (same input)."""
    weight = torch.cat([layer.weight.detach() for layer in layers], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class FusedSwiGLU(nn.Module):
    """Krea 2's SwiGLU with its gate and up projections as one GEMM."""

    def __init__(self, ff: nn.Module) -> None:
        super().__init__()
        self.gate_up = concat_linears([ff.gate, ff.up])
        self.down = ff.down

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(hidden_states).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def fuse_projections(transformer: nn.Module) -> None:
    """Per block: q, k, v and the output gate as one GEMM (`attn.to_qkvg`, read by `Krea2FastAttnProcessor`), and the
    SwiGLU's gate and up as one. The same dot products, fewer and larger GEMMs. With fp8 it also quantises each input
    once: compiled, the unfused block wrote four fp8 copies of the same normed activations (one per projection) and
    two of the MLP input. Row-wise fp8 scales are per output row, so quantising the fused weight is identical to
    quantising its parts. Call before `quantize_fp8`."""
    for block in transformer.transformer_blocks:
        attn = block.attn
        if hasattr(attn, "to_qkvg"):
            continue
        attn.to_qkvg = concat_linears([attn.to_q, attn.to_k, attn.to_v, attn.to_gate])
        del attn.to_q, attn.to_k, attn.to_v, attn.to_gate
        block.ff = FusedSwiGLU(block.ff)


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """fp8 weights and activations, row-wise scales, for the linear layers of the repeated blocks (where ~all the
    FLOPs are). Needs compute capability >= 8.9 and torchao."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def in_blocks(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)


def prepare_transformer(transformer: nn.Module, *, fp8: bool, attention: str | None) -> None:
    """The fast path's changes to one transformer, in the order they need: fused projections and fp8 (together: fusion
    pays through fp8's per-input quantisation), then the attention processor or backend."""
    from .attention import KERNEL_NAMES, install_fast_attention

    drop_denoiser_graphs(transformer)  # captured kernels would keep reading the replaced weights
    if fp8:
        fuse_projections(transformer)
        quantize_fp8(transformer)
    kernel = attention if attention in KERNEL_NAMES else None  # ours (FA4, cuDNN fp8), not a diffusers backend
    if fp8 or kernel:  # fused projections need the fast processor, which reads `to_qkvg`
        install_fast_attention(transformer, kernel)
    elif attention:
        transformer.set_attention_backend(attention)


def compile_blocks(transformer) -> None:
    # diffusers' regional compilation: every Krea2TransformerBlock shares one compiled graph, so compiling takes
    # seconds instead of minutes and Raw reuses what Turbo compiled (same block class, weights are inputs).
    # dynamic=None (automatic), not True: True also made the model width symbolic, and the generated fp8 quantisation
    # kernels then indexed with runtime div/mod. Automatic marks only what changes between calls (the sequence length,
    # after the warm-up's second shape) dynamic.
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=None)


def compile_and_warm_up(
    manager: ModelManager, sizes=WARMUP_SIZES, steps: int = 2, batch_sizes: tuple[int, ...] = (1, 2)
) -> float:
    """Compile both transformers (and the VAE decoder's norm+SiLU), put fresh denoiser CUDA graphs on them where the
    options ask, and run short generations so no user waits for compilation or capture. Returns seconds.

    Batch size 1 compiles a graph of its own (torch specialises size-1 dimensions), so a 2-image request is part of the
    warm-up too. Two steps per run: the first compiles, the second captures the denoiser's graph for that shape."""
    start = time.perf_counter()
    options = manager.options
    pool = torch.cuda.graph_pool_handle() if options.denoiser_graphs else None  # Raw and Turbo never run together
    for pipe in manager.pipes.values():
        compile_blocks(pipe.transformer)
        if options.denoiser_graphs:
            install_denoiser_graphs(pipe.transformer, pool)
        use_single_frame_decode(pipe.vae, options.single_frame_decode, compiled=True)
    runs = [(w, h, prompt, 1) for w, h in sizes for prompt in WARMUP_PROMPTS]
    runs += [(*sizes[0], WARMUP_PROMPTS[0], n) for n in batch_sizes if n > 1]
    for width, height, prompt, count in runs:
        for key, pipe in manager.pipes.items():
            request = GenerationRequest(
                prompt=prompt, checkpoint=key, steps=steps, width=width, height=height, seed=0, num_images=count,
                guidance=None if key == "raw" else 0.0,
            )  # fmt: skip
            manager._generate_locked(pipe, request, None, threading.Event())
    seconds = time.perf_counter() - start
    log.info("Compile warm-up done in %.1f s", seconds)
    return seconds
