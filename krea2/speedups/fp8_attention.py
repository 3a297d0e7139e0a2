"""fp8 attention on Hopper through cuDNN's fp8 SDPA (the `nvidia-cudnn-frontend` package): optional, not exact.

FlashAttention-4's fp8 path runs on Blackwell only, so on Hopper cuDNN's fp8 flash-attention kernel is the candidate.
It pays at large sizes only, where attention is a large part of a step (bench/NOTES.md, third session).

Numerics, per call: K's mean over the sequence is subtracted (exact: softmax ignores a per-head key offset); Q, K
and V are scaled per tensor by powers of two that put each one's largest magnitude in (224, 448], fp8's top binade;
the kernel quantises the softmax probabilities P (<= 1) with a fixed scale; Hopper writes O in fp8 too, with half of
V's scale (O is a convex combination of V's rows, so |O| <= max|V|; the half is headroom for P's rounding), and O
is dequantised right away. Its error, per attention call and per transformer call, is in bench/NOTES.md; how peaked
the trained model's attention is changes it, and random weights cannot show it, so this is a setting
(`KREA2_ATTENTION=cudnn-fp8`), never chosen automatically.

The kernel is wrapped as a torch custom op so compiled blocks treat it as one call, while the quantisation around it
stays in the compiled graph, fused with RoPE and the output gate. cuDNN plans are built per shape (once per prompt
length and size) and cached; a shape cuDNN refuses falls back, with a log line, to SDPA on the dequantised
inputs inside the op, so a request never fails on it.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
import torch.nn.functional as F

from ..errors import error_summary
from ..lru_cache import LRUCache

log = logging.getLogger(__name__)

CUDNN_FP8 = "cudnn-fp8"
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
P_SCALE = 448.0  # softmax probabilities are <= 1: this maps them onto fp8's whole range
PROBE_TOLERANCE = 0.1  # relative L2 against SDPA on random data; fp8 attention lands at a few percent


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 copy of `x` scaled by a power of two that puts its largest magnitude in (224, 448], and the descale."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    scale = torch.exp2(torch.floor(torch.log2(FP8_MAX / amax)))
    quantized = (x.float() * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantized, scale.reciprocal().reshape(1, 1, 1, 1)


def fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Unmasked attention of (batch, seq, heads, dim) tensors in fp8; key/value may have fewer heads (grouped-query).
    Returns `query`'s dtype."""
    # Softmax is unchanged when every key of a head shifts by the same vector (each query's scores shift by one
    # constant), so the keys' mean over the sequence is taken out first: an exact step that narrows what the per-tensor
    # scale must cover where trained keys share an offset (SageAttention's "smooth K"; random weights have none).
    key = key.float() - key.float().mean(dim=1, keepdim=True)
    q8, q_descale = quantize_per_tensor(query)
    k8, k_descale = quantize_per_tensor(key)
    v8, v_descale = quantize_per_tensor(value)
    o_scale = 0.5 / v_descale
    out = cudnn_fp8_attention(q8, k8, v8, q_descale, k_descale, v_descale, o_scale)
    return (out.float() / o_scale).to(query.dtype)


@torch.library.custom_op("krea2studio::cudnn_fp8_attention", mutates_args=())
def cudnn_fp8_attention(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    o_scale: torch.Tensor,
) -> torch.Tensor:
    """fp8 O (scaled by `o_scale`) of fp8 (batch, seq, heads, dim) inputs, each with its (1, 1, 1, 1) fp32 descale."""
    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()  # the plan's strides are (b, s, h, d) memory
    plan = _plan_for(q8, k8)
    if plan is None:  # cuDNN refused this shape: same result through SDPA on the dequantised inputs
        q, k, v = (t.float() * s for t, s in ((q8, q_descale), (k8, k_descale), (v8, v_descale)))
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2).bfloat16(), k.transpose(1, 2).bfloat16(), v.transpose(1, 2).bfloat16(), enable_gqa=True
        ).transpose(1, 2)
        return (o.float() * o_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    out = torch.empty_like(q8)
    plan.run(q8, k8, v8, q_descale, k_descale, v_descale, o_scale, out)
    return out


@cudnn_fp8_attention.register_fake
def _(q8, k8, v8, q_descale, k_descale, v_descale, o_scale) -> torch.Tensor:
    return torch.empty_like(q8)


class _Plan:
    """One cuDNN fp8 SDPA graph for one (batch, seq_q, heads, seq_kv, kv_heads, dim) on one device."""

    def __init__(self, q8: torch.Tensor, k8: torch.Tensor) -> None:
        import cudnn

        batch, seq_q, heads, dim = q8.shape
        _, seq_kv, kv_heads, _ = k8.shape
        self.handle = _handle(q8.device)
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(
            io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=self.handle
        )

        def bshd(name: str, seq: int, n_heads: int):  # logical (b, h, s, d) over (b, s, h, d) memory
            stride = (seq * n_heads * dim, dim, n_heads * dim, 1)
            return graph.tensor(name=name, dim=(batch, n_heads, seq, dim), stride=stride, data_type=e4m3)

        self.q, self.k, self.v = bshd("q", seq_q, heads), bshd("k", seq_kv, kv_heads), bshd("v", seq_kv, kv_heads)
        scalar = {"dim": (1, 1, 1, 1), "stride": (1, 1, 1, 1), "data_type": fp32}
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        self.scalars = {name: graph.tensor(name=name, **scalar) for name in names}
        s = self.scalars
        o, _, amax_s, amax_o = graph.sdpa_fp8(
            q=self.q, k=self.k, v=self.v,
            descale_q=s["descale_q"], descale_k=s["descale_k"], descale_v=s["descale_v"],
            descale_s=s["descale_s"], scale_s=s["scale_s"], scale_o=s["scale_o"],
            attn_scale=dim**-0.5, use_causal_mask=False, generate_stats=False,
        )  # fmt: skip
        o_stride = (seq_q * heads * dim, dim, heads * dim, 1)
        o.set_output(True).set_dim((batch, heads, seq_q, dim)).set_stride(o_stride).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        self.o, self.amax_s, self.amax_o = o, amax_s, amax_o
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph = graph
        device = q8.device
        self.workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=device)
        self.p_scale = torch.full((1, 1, 1, 1), P_SCALE, dtype=torch.float32, device=device)
        self.p_descale = self.p_scale.reciprocal()
        self.amax_buffers = torch.empty(2, 1, 1, 1, 1, dtype=torch.float32, device=device)

    def run(self, q8, k8, v8, q_descale, k_descale, v_descale, o_scale, out) -> None:
        import cudnn

        s = self.scalars
        pack = {
            self.q: q8, self.k: k8, self.v: v8,
            s["descale_q"]: q_descale, s["descale_k"]: k_descale, s["descale_v"]: v_descale,
            s["descale_s"]: self.p_descale, s["scale_s"]: self.p_scale, s["scale_o"]: o_scale,
            self.o: out, self.amax_s: self.amax_buffers[0], self.amax_o: self.amax_buffers[1],
        }  # fmt: skip
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
        self.graph.execute(pack, self.workspace, handle=self.handle)


# Plans per shape, bounded: every new prompt length (and image size) makes new shapes; a plan is quick to rebuild.
_plans: LRUCache[_Plan | None] = LRUCache(64)


def _plan_for(q8: torch.Tensor, k8: torch.Tensor) -> _Plan | None:
    def build() -> _Plan | None:
        start = time.perf_counter()
        try:
            plan = _Plan(q8, k8)
        except Exception as error:  # noqa: BLE001 - cuDNN says "not supported" in many ways
            log.warning("cuDNN fp8 attention refused %s/%s (%s); using SDPA for it", q8.shape, k8.shape, error)
            return None
        log.info("cuDNN fp8 attention plan for %s/%s built in %.2f s", q8.shape, k8.shape, time.perf_counter() - start)
        return plan

    return _plans.get_or_compute((q8.device, tuple(q8.shape), tuple(k8.shape)), build)


@functools.cache
def _handle(device: torch.device):
    import cudnn

    with torch.cuda.device(device):
        return cudnn.create_handle()


@functools.cache
def cudnn_fp8_unavailable_reason() -> str | None:
    """None when cuDNN's fp8 attention ran here and agreed with SDPA, else why not (one line). Probed with Krea 2's
    head layout (4 query heads per KV head, head dim 128)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if torch.cuda.get_device_capability()[0] not in (9, 10):
        return "cuDNN fp8 attention needs a Hopper or Blackwell GPU"
    try:
        import cudnn  # noqa: F401

        torch.manual_seed(0)
        query = torch.randn(1, 512, 8, 128, device="cuda", dtype=torch.bfloat16)
        key, value = (torch.randn(1, 512, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        q8, k8 = quantize_per_tensor(query)[0], quantize_per_tensor(key)[0]
        if _plan_for(q8, k8) is None:
            return "cuDNN refused fp8 attention with grouped-query heads"
        out = fp8_attention(query, key, value).float()
        reference = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), enable_gqa=True
        ).transpose(1, 2)
        error = float((out - reference.float()).norm() / reference.float().norm())
    except Exception as failure:  # noqa: BLE001 - import, library loading and planning fail in many ways
        return f"cuDNN fp8 attention did not run ({error_summary(failure)})"
    if not error < PROBE_TOLERANCE:
        return f"cuDNN fp8 attention gave wrong results (relative L2 {error:.3g} against SDPA)"
    log.info("cuDNN fp8 attention: relative L2 %.4f against SDPA on the start-up probe", error)
    return None
