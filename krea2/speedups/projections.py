"""Fused projections: per Krea 2 block, q, k, v and the output gate as one GEMM, and the SwiGLU's gate and up as one.

The same dot products in fewer, larger GEMMs. What it buys is fp8's: compiled, the unfused block quantised the same
normed activations four times (one fp8 copy per projection) and the MLP input twice; fused, each input is quantised
once (bench/NOTES.md, second session). Row-wise fp8 scales are per output row, so quantising a fused weight is
identical to quantising its parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Each fused projection and the projections it concatenates, in order (a block's names, relative to the block).
FUSED_PARTS = {
    "attn.to_qkvg": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate"),
    "ff.gate_up": ("ff.gate", "ff.up"),
}


def concat_linears(layers: list[nn.Linear], names: list[str]) -> nn.Linear:
    """One bias-free Linear whose output is the concatenation of `layers`' outputs (same input). Its `fused_parts`
    says which output rows were which layer (`names`, siblings of the fused layer): LoRAs trained on the separate
    layers fold into those rows (krea2/lora_fold.py)."""
    weight = torch.cat([layer.weight.detach() for layer in layers], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    bounds = torch.tensor([0] + [layer.out_features for layer in layers]).cumsum(0).tolist()
    fused.fused_parts = {name: (start, stop) for name, start, stop in zip(names, bounds[:-1], bounds[1:], strict=True)}
    return fused


class FusedSwiGLU(nn.Module):
    """Krea 2's SwiGLU with its gate and up projections as one GEMM."""

    def __init__(self, ff: nn.Module) -> None:
        super().__init__()
        self.gate_up = concat_linears([ff.gate, ff.up], ["gate", "up"])
        self.down = ff.down

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(hidden_states).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def fuse_projections(transformer: nn.Module) -> None:
    """Fuse every block's projections in place (`attn.to_qkvg`, read by `Krea2FastAttnProcessor`, and
    `FusedSwiGLU`); blocks already fused are left alone. Before fp8 quantisation, so the fused weights are quantised."""
    for block in transformer.transformer_blocks:
        fuse_block_projections(block)


def fuse_block_projections(block: nn.Module) -> None:
    """One block's projections fused in place (a block fused already is left alone). The small-GPU plans fuse and
    quantise block by block on the way to the GPU (`krea2/residency.py`)."""
    attn = block.attn
    if hasattr(attn, "to_qkvg"):
        return
    names = ["to_q", "to_k", "to_v", "to_gate"]
    attn.to_qkvg = concat_linears([getattr(attn, name) for name in names], names)
    del attn.to_q, attn.to_k, attn.to_v, attn.to_gate
    block.ff = FusedSwiGLU(block.ff)


def projections_fused(transformer: nn.Module) -> bool:
    return all(hasattr(block.attn, "to_qkvg") for block in transformer.transformer_blocks)
