"""An experiment, measured and dropped: quantised attention in Triton for Hopper, 8-bit Q·K (int8 or fp8, one scale
per token and head) and fp8 P·V. Only bench/profile_step.py (section `quantized_attention`) uses it; see NOTES.md.

The idea is SageAttention 2's: Hopper's 8-bit tensor cores run at twice the bf16 rate, and attention at Krea 2's 1024²
shape (4.2k tokens, 48 query heads over 12 KV heads of 128) is a fifth of each step. What it measured: at most ~500
TFLOP/s, below FlashAttention-4's ~600 in bf16. With the 8-bit products at twice the rate, the softmax between them
(an exp2, scalings and row reductions per score, on the CUDA cores) takes as long as the two products, and this kernel
runs them one after the other; FA3's fp8 kernel reaches ~1000 by overlapping one tile's softmax with another tile's
products in specialised warpgroups, which Triton's `warp_specialize` did not do here (no change).

Kernel: one program computes BLOCK_M query rows of one head against every key of its KV head (grouped-query: query
head h reads KV head h // group), online softmax in base 2, as in FlashAttention. The loop runs over whole key blocks
with no masks; the last, partial block (the sequence is image + text tokens) runs once more with one.

Numerics:
- Q and K get one scale per token and head (the absolute maximum over the head dimension), computed where RoPE is,
  so compiled blocks fuse it into the same kernel. K's mean over the sequence is subtracted first: exact, since every
  query's scores shift by one constant, and it keeps an offset that all keys share out of the 8-bit range.
- V gets one fp8 scale per channel (maximum over the sequence) and is written transposed, (batch, kv head, dim,
  sequence padded to 16), because Hopper's fp8 tensor-core instructions read both operands along the reduced dimension.
- The softmax probabilities are quantised to fp8 at 2**8 times their value (<= 256 of fp8's 448) so small ones keep
  their precision; the factor cancels in the normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

INT8 = torch.int8
FP8 = torch.float8_e4m3fn
_RANGE = {INT8: 127.0, FP8: 448.0}
_V_PAD = 16  # the transposed V's rows must be 16-byte aligned for vectorised (and TMA) loads


def quantize_per_token(x: torch.Tensor, dtype: torch.dtype, smooth: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, heads, dim) -> 8-bit copy in the same layout and its fp32 descales, (batch, heads, seq)."""
    x = x.float()
    if smooth:
        x = x - x.mean(dim=1, keepdim=True)
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    scaled = x * (_RANGE[dtype] / amax)
    quantized = scaled.round().to(dtype) if dtype == INT8 else scaled.to(dtype)
    return quantized, (amax / _RANGE[dtype]).squeeze(-1).transpose(1, 2).contiguous()


def quantize_value(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, kv heads, dim) -> fp8 (batch, kv heads, dim, seq padded to 16) and per-channel descales,
    (batch, kv heads, dim)."""
    v = value.float()
    amax = v.abs().amax(dim=1).clamp_min(1e-12)  # (batch, kv heads, dim)
    scaled = (v * (448.0 / amax).unsqueeze(1)).permute(0, 2, 3, 1)
    pad = -scaled.shape[-1] % _V_PAD
    return F.pad(scaled, (0, pad)).to(FP8).contiguous(), amax / 448.0


def quantized_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qk_dtype=INT8):
    """The same quantisation, dequantised and run through SDPA: what the kernel computes, minus P's rounding. SDPA runs
    in the input's dtype (bf16 on the GPU: fp32 would take SDPA's math path, which holds every score, 52 GB at 2048²,
    and ran out of memory on the H100)."""
    q8, qs = quantize_per_token(query, qk_dtype)
    k8, ks = quantize_per_token(key, qk_dtype, smooth=True)
    vt8, vs = quantize_value(value)
    seq = value.shape[1]
    q = q8.float() * qs.transpose(1, 2).unsqueeze(-1)
    k = k8.float() * ks.transpose(1, 2).unsqueeze(-1)
    v = (vt8[..., :seq].float() * vs.unsqueeze(-1)).permute(0, 3, 1, 2)
    q, k, v = (t.transpose(1, 2).to(query.dtype) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2)


LOG2E = 1.4426950408889634
P_EXPONENT = 8.0  # P is quantised at 2**8 times its value (<= 256 < fp8's 448)


@triton.jit
def _attend_block(
    acc, l_i, m_i, q, qs, k_ptrs, ks_ptrs, vt_ptrs, start_n, seq_kv, stride_ks, offs_n,
    QK_TYPE: tl.constexpr, MASKED: tl.constexpr, SPLIT_ACC: tl.constexpr, P_EXP: tl.constexpr,
):  # fmt: skip
    # 8-bit tensors arrive as bytes and are bitcast: a masked load's zero fill cannot be written as an fp8 constant
    if MASKED:
        valid = start_n + offs_n < seq_kv
        k = tl.load(k_ptrs + start_n * stride_ks, mask=valid[:, None], other=0)
        ks = tl.load(ks_ptrs + start_n, mask=valid, other=0.0)
        vt = tl.load(vt_ptrs + start_n, mask=valid[None, :], other=0)
    else:
        k = tl.load(k_ptrs + start_n * stride_ks)
        ks = tl.load(ks_ptrs + start_n)
        vt = tl.load(vt_ptrs + start_n)
    k = k.to(QK_TYPE, bitcast=True)
    vt = vt.to(tl.float8e4nv, bitcast=True)
    s = tl.dot(q, tl.trans(k)).to(tl.float32) * qs[:, None] * ks[None, :]
    if MASKED:
        s = tl.where(valid[None, :], s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - (m_new - P_EXP)[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    p8 = p.to(tl.float8e4nv)
    if SPLIT_ACC:  # fp32 sums across key blocks outside the tensor cores (Hopper's fp8 accumulators are narrower)
        acc = acc * alpha[:, None] + tl.dot(p8, tl.trans(vt))
    else:
        acc = tl.dot(p8, tl.trans(vt), acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _quantized_attention_fwd(
    Q, QS, K, KS, VT, VS, Out,
    seq_q, seq_kv, whole, qk_scale,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vh, stride_vd,
    stride_ob, stride_os, stride_oh,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_TYPE: tl.constexpr, SPLIT_ACC: tl.constexpr,
    P_EXP: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    hk = h // (HEADS // KV_HEADS)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m < seq_q

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :], mask=rows[:, None], other=0
    )
    q = q.to(QK_TYPE, bitcast=True)
    qs = tl.load(QS + (b * HEADS + h) * seq_q + offs_m, mask=rows, other=0.0) * qk_scale
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]
    ks_ptrs = KS + (b * KV_HEADS + hk) * seq_kv + offs_n
    vt_ptrs = VT + b * stride_vb + hk * stride_vh + offs_d[:, None] * stride_vd + offs_n[None, :]

    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in tl.range(0, whole, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, qs, k_ptrs, ks_ptrs, vt_ptrs, start_n, seq_kv, stride_ks, offs_n,
            QK_TYPE=QK_TYPE, MASKED=False, SPLIT_ACC=SPLIT_ACC, P_EXP=P_EXP,
        )  # fmt: skip
    if whole < seq_kv:
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, qs, k_ptrs, ks_ptrs, vt_ptrs, whole, seq_kv, stride_ks, offs_n,
            QK_TYPE=QK_TYPE, MASKED=True, SPLIT_ACC=SPLIT_ACC, P_EXP=P_EXP,
        )  # fmt: skip

    vs = tl.load(VS + (b * KV_HEADS + hk) * HEAD_DIM + offs_d)
    out = acc * (1.0 / l_i)[:, None] * vs[None, :]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=rows[:, None])


def quantized_attention_kernel(
    q8: torch.Tensor,
    qs: torch.Tensor,
    k8: torch.Tensor,
    ks: torch.Tensor,
    vt8: torch.Tensor,
    vs: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block_m: int = 128,
    block_n: int = 128,
    num_warps: int = 8,
    num_stages: int = 3,
    split_acc: bool = True,
    warp_specialize: bool = False,
) -> torch.Tensor:
    """Attention of quantised inputs (the layouts of `quantize_per_token` and `quantize_value`); (batch, seq, heads,
    dim) out in `out_dtype`."""
    batch, seq_q, heads, dim = q8.shape
    _, seq_kv, kv_heads, _ = k8.shape
    assert q8.stride(-1) == k8.stride(-1) == vt8.stride(-1) == 1 and heads % kv_heads == 0
    out = torch.empty(q8.shape, dtype=out_dtype, device=q8.device)
    grid = (triton.cdiv(seq_q, block_m), batch * heads)
    qk_type = tl.float8e4nv if q8.dtype == torch.float8_e4m3fn else tl.int8
    _quantized_attention_fwd[grid](
        q8.view(torch.uint8), qs, k8.view(torch.uint8), ks, vt8.view(torch.uint8), vs, out,
        seq_q, seq_kv, seq_kv // block_n * block_n, dim**-0.5 * LOG2E,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        vt8.stride(0), vt8.stride(1), vt8.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=dim,
        BLOCK_M=block_m, BLOCK_N=block_n, QK_TYPE=qk_type, SPLIT_ACC=split_acc, P_EXP=P_EXPONENT,
        WARP_SPECIALIZE=warp_specialize,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
