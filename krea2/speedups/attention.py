"""Krea 2's attention for the fast path: fused projections and FlashAttention-4, each a setting.

- Fused projections (`projections.py`) give each block one `to_qkvg` GEMM instead of four; this processor reads
  either layout.
- FlashAttention-4 (the CuTe-DSL kernels of the `flash-attn-4` package). On Hopper its SM90 kernel runs Krea 2's
  attention faster than the cuDNN kernel PyTorch's SDPA picks there, most at large sizes (bench/NOTES.md). It takes
  the grouped-query layout (48 query heads over 12 KV heads) directly, so keys and values are not repeated to 48
  heads first. Exact attention (bf16 in, fp32 softmax), not an approximation. It covers the unmasked
  case (PAD-free text, the fast path); with a mask the call goes through diffusers' attention dispatch as in stock.

The processor is installed through diffusers' public `set_attn_processor`; the computation is diffusers'
`Krea2AttnProcessor` (projections, q/k RMSNorm, RoPE, sigmoid output gate) with those two changes.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..errors import error_summary
from .fp8_attention import CUDNN_FP8, cudnn_fp8_unavailable_reason, fp8_attention

FLASH4 = "flash4"
KERNEL_NAMES = {FLASH4: "FlashAttention-4", CUDNN_FP8: "cuDNN fp8 attention"}


@functools.cache
def flash4_unavailable_reason() -> str | None:
    """None when FA4 ran here, else why not (one line). It runs a small attention call first, with Krea 2's head
    layout, and compares it with SDPA: an importable package can still fail to JIT-compile its kernel (for example
    with a driver older than the CUDA 13 DSL libraries), and that must show up at start-up, not in a user's request.
    The probe compiles the very kernel the transformer uses (FA4 keys its compile cache on head dim and group size,
    not sequence length)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if torch.cuda.get_device_capability() < (9, 0):
        return "needs compute capability >= 9.0 (Hopper or newer)"
    try:
        import flash_attn.cute  # noqa: F401

        torch.manual_seed(0)
        query = torch.randn(1, 256, 4, 128, device="cuda", dtype=torch.bfloat16)
        key, value = (torch.randn(1, 256, 1, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = flash4_attention(query, key, value)
        reference = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), enable_gqa=True
        ).transpose(1, 2)
        error = float((out.float() - reference.float()).abs().max())
    except Exception as failure:  # noqa: BLE001 - importing and JIT-compiling DSL kernels can fail in many ways
        return f"flash-attn-4 did not run ({error_summary(failure)})"
    if not error < 0.02:
        return f"flash-attn-4 gave wrong results (max abs difference {error:.3g} against SDPA)"
    return None


# A custom op, so torch.compile (regional compilation of the blocks, fullgraph) treats the DSL kernel as one opaque
# call instead of trying to trace into it.
@torch.library.custom_op("krea2studio::flash4_attention", mutates_args=())
def flash4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(batch, seq, heads, dim) in and out; key/value may have fewer heads (grouped-query)."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(query, key, value)
    return out[0] if isinstance(out, tuple) else out


@flash4_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(query)


class Krea2FastAttnProcessor:
    _attention_backend = None  # diffusers' dispatch reads these, as on its own processors
    _parallel_config = None

    def __init__(self, kernel: str | None = None) -> None:
        self.kernel = kernel  # FLASH4, CUDNN_FP8 (fp8_attention.py) or None: diffusers' dispatch

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        inner, kv = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        if hasattr(attn, "to_qkvg"):
            query, key, value, gate = attn.to_qkvg(hidden_states).split([inner, kv, kv, inner], dim=-1)
        else:
            query, key = attn.to_q(hidden_states), attn.to_k(hidden_states)
            value, gate = attn.to_v(hidden_states), attn.to_gate(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (attn.num_heads, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (attn.num_kv_heads, attn.head_dim)))
        value = value.unflatten(-1, (attn.num_kv_heads, attn.head_dim))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if self.kernel == FLASH4 and attention_mask is None:
            hidden_states = flash4_attention(query.contiguous(), key.contiguous(), value.contiguous())
        elif self.kernel == CUDNN_FP8 and attention_mask is None:
            hidden_states = fp8_attention(query, key, value)
        else:  # as stock: repeat the KV heads so every SDPA kernel accepts the (optional) mask
            groups = attn.num_heads // attn.num_kv_heads
            if groups > 1:
                key, value = key.repeat_interleave(groups, dim=2), value.repeat_interleave(groups, dim=2)
            hidden_states = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
        hidden_states = hidden_states.flatten(2, 3) * torch.sigmoid(gate)
        return attn.to_out[0](hidden_states)


def install_fast_attention(transformer, kernel: str | None = None) -> None:
    """Put the fast processor on every Krea 2 attention layer of `transformer`, running `kernel` (FLASH4, CUDNN_FP8 or
    None for diffusers' dispatch); a transformer that runs it already is left alone (a new processor object would make
    compiled blocks recompile). Raises RuntimeError when the kernel cannot run here."""
    probes = {FLASH4: flash4_unavailable_reason, CUDNN_FP8: cudnn_fp8_unavailable_reason}
    if kernel is not None and kernel not in probes:
        raise ValueError(f"unknown attention kernel {kernel!r}")
    if kernel is not None and (reason := probes[kernel]()) is not None:
        raise RuntimeError(f"{KERNEL_NAMES[kernel]} unavailable: {reason}")
    current = block_attention_processor(transformer)
    if isinstance(current, Krea2FastAttnProcessor) and current.kernel == kernel:
        return
    transformer.set_attn_processor(Krea2FastAttnProcessor(kernel=kernel))


def block_attention_processor(transformer):
    """The attention processor of the transformer's first block (`install_fast_attention` puts one on all)."""
    return next(iter(transformer.transformer_blocks)).attn.processor


def attention_in_use(transformer) -> str | None:
    """What the blocks' attention runs beyond stock, by name: one of `KERNEL_NAMES`' or a diffusers backend's;
    None for the stock dispatch (PyTorch's SDPA)."""
    processor = block_attention_processor(transformer)
    kernel = getattr(processor, "kernel", None)
    if kernel is not None:
        return KERNEL_NAMES[kernel]
    backend = getattr(processor, "_attention_backend", None)
    return None if backend is None else f"attention backend {getattr(backend, 'value', backend)}"
