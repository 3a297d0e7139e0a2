"""Where one full-size Krea 2 step's time goes, and what the candidate kernels would save. Run on a CUDA GPU:

    python bench/profile_step.py --out bench/results

Sections (each result is written as soon as it exists, so a run cut short still reports what it measured):
  attention  the attention call at 1024² and 2048² shapes: SDPA's kernels (with the stock head repetition), SDPA with
             native grouped-query, FlashAttention-4 (flash-attn-4 package) and SageAttention 1 when installed;
  gemm       one block's linear layers: bf16, fp8 row-wise and tensor-wise scaling, and fused QKV+gate / gate+up;
  step       one compiled fp8 transformer call, profiled by kernel category, with SDPA and with FA4;
  encode     the text encoder on the 512-token padded template (stock) and on the real tokens only, and the VAE decode
             at 1024², plain and with cuDNN autotuning;
  exact_io   text encoder from CUDA graphs vs eager, single-frame vs stock VAE decode, 8-bit conversion on the GPU;
  decode_kernels  the single-frame VAE decode by kernel (the VAE alone).
  quantized_attention  an 8-bit attention kernel in Triton (bench/quantized_attention.py) against SDPA: time, error;
  max_autotune  the compiled fp8 step with inductor's GEMM autotuning (cuBLAS against Triton templates) and without.
The attention section includes cuDNN's fp8 attention (nvidia-cudnn-frontend) where it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import PROMPT, build_full_size, environment, result_path
from krea2.errors import error_summary

log = logging.getLogger("profile")
HEADS, KV_HEADS, HEAD_DIM, WIDTH, FFN = 48, 12, 128, 6144, 16384
TEXT_TOKENS = 64


def cuda_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of `fn` on the GPU (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# ------------------------------------------------------------------------------------------------ attention
def attention(results: dict) -> None:
    out: dict = {}
    results["attention"] = out
    for label, image_tokens in (("1024", 4096), ("2048", 16384)):
        out.update(attention_case(label, image_tokens + TEXT_TOKENS))


def attention_case(label: str, seq: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict = {}
    q = torch.randn(1, seq, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, seq, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, seq, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    flops = 4 * seq * seq * HEADS * HEAD_DIM
    groups = HEADS // KV_HEADS

    def sdpa(backend=None, gqa=False):
        def run():
            kk, vv = (k, v) if gqa else (k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2))
            args = (q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2))
            if backend is None:
                return F.scaled_dot_product_attention(*args, enable_gqa=gqa).transpose(1, 2)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*args, enable_gqa=gqa).transpose(1, 2)

        return run

    variants: dict[str, Callable] = {
        "sdpa_default_repeat_kv": sdpa(),  # what diffusers' native backend does for Krea 2 today
        "sdpa_flash_repeat_kv": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa_cudnn_repeat_kv": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa_efficient_repeat_kv": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_flash_gqa": sdpa(SDPBackend.FLASH_ATTENTION, gqa=True),
    }
    try:
        from krea2.speedups.attention import flash4_attention

        variants["flash4_gqa"] = lambda: flash4_attention(q, k, v)
    except Exception as error:  # noqa: BLE001 - record why a candidate is missing, measure the rest
        out[f"{label}_flash4_error"] = repr(error)
    try:
        from sageattention import sageattn

        def sage():
            kk, vv = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
            return sageattn(q, kk, vv, tensor_layout="NHD")

        variants["sage1_repeat_kv"] = sage
    except Exception as error:  # noqa: BLE001
        out[f"{label}_sage_error"] = repr(error)

    try:
        from krea2.speedups.fp8_attention import cudnn_fp8_unavailable_reason, fp8_attention

        reason = cudnn_fp8_unavailable_reason()
        if reason is None:
            start = time.perf_counter()
            fp8_attention(q, k, v)  # builds this shape's cuDNN plan
            torch.cuda.synchronize()
            out[f"{label}_cudnn_fp8_first_call_s"] = time.perf_counter() - start
            variants["cudnn_fp8_gqa"] = lambda: fp8_attention(q, k, v)  # eager: quantisation unfused, counted
            out.update(fp8_kernel_only(label, q, k, v, flops))
        else:
            out[f"{label}_cudnn_fp8_error"] = reason
    except Exception as error:  # noqa: BLE001
        out[f"{label}_cudnn_fp8_error"] = repr(error)

    reference = variants["sdpa_flash_repeat_kv"]()
    for name, fn in variants.items():
        try:
            result = fn()
            ms = cuda_ms(fn)
            out[f"{label}_{name}"] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_l2_vs_flash": rel(result, reference)}
        except Exception as error:  # noqa: BLE001
            out[f"{label}_{name}"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        log.info("attention %s %s: %s", label, name, out.get(f"{label}_{name}"))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:  # the default's kernel
        variants["sdpa_default_repeat_kv"]()
        torch.cuda.synchronize()
    out[f"{label}_default_kernels"] = [e.key[:120] for e in prof.key_averages()][:8]
    return out


def fp8_kernel_only(label: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flops: int) -> dict:
    """cuDNN's fp8 kernel alone, on already-quantised inputs (compiled blocks fuse the quantisation into RoPE)."""
    from krea2.speedups.fp8_attention import cudnn_fp8_attention, quantize_per_tensor

    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in (q, k, v))
    o_scale = 0.5 / dv
    ms = cuda_ms(lambda: cudnn_fp8_attention(q8, k8, v8, dq, dk, dv, o_scale))
    return {f"{label}_cudnn_fp8_kernel_only": {"ms": ms, "tflops": flops / ms / 1e9}}


# ------------------------------------------------------------------------------------------------ gemm
LAYERS = {  # (out_features, in_features) of one Krea2TransformerBlock's linears
    "to_q": (WIDTH, WIDTH), "to_k": (KV_HEADS * HEAD_DIM, WIDTH), "to_v": (KV_HEADS * HEAD_DIM, WIDTH),
    "to_gate": (WIDTH, WIDTH), "to_out": (WIDTH, WIDTH), "ff_gate": (FFN, WIDTH), "ff_up": (FFN, WIDTH),
    "ff_down": (WIDTH, FFN),
}  # fmt: skip
FUSED = {"qkv_gate": (WIDTH * 2 + 2 * KV_HEADS * HEAD_DIM, WIDTH), "ff_gate_up": (2 * FFN, WIDTH)}


def gemm(results: dict) -> None:
    out: dict = {}
    results["gemm"] = out
    for m in (4096 + TEXT_TOKENS, 16384 + TEXT_TOKENS):
        per = {name: gemm_case(m, n, kdim) for name, (n, kdim) in {**LAYERS, **FUSED}.items()}
        for key in ("bf16_ms", "fp8_row_fast1_ms", "fp8_tensor_ms"):
            per[f"block_separate_{key}"] = sum(per[n][key] for n in LAYERS)
            per[f"block_fused_{key}"] = sum(per[n][key] for n in ("qkv_gate", "to_out", "ff_gate_up", "ff_down"))
        out[f"M{m}"] = per
        log.info("gemm M=%d: %s", m, {k: round(v, 3) for k, v in per.items() if k.startswith("block_")})


def gemm_case(m: int, n: int, kdim: int) -> dict:
    e4m3 = torch.float8_e4m3fn
    a = torch.randn(m, kdim, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02
    a8, w8 = a.to(e4m3), w.to(e4m3)
    row_a = torch.ones(m, 1, device="cuda", dtype=torch.float32)
    row_b = torch.ones(1, n, device="cuda", dtype=torch.float32)
    one = torch.ones((), device="cuda", dtype=torch.float32)
    flops = 2 * m * n * kdim

    def scaled(scale_a, scale_b, fast):
        return lambda: torch._scaled_mm(
            a8, w8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    entry = {
        "bf16_ms": cuda_ms(lambda: F.linear(a, w)),
        "fp8_row_fast1_ms": cuda_ms(scaled(row_a, row_b, True)),
        "fp8_row_fast0_ms": cuda_ms(scaled(row_a, row_b, False)),
        "fp8_tensor_ms": cuda_ms(scaled(one, one, True)),
    }
    for key in ("bf16", "fp8_row_fast1", "fp8_tensor"):
        entry[f"{key}_tflops"] = flops / entry[f"{key}_ms"] / 1e9
    return entry


# ------------------------------------------------------------------------------------------------ step
CATEGORIES = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
    ("gemm", re.compile(r"gemm|scaled_mm|cutlass|xmma|nvjet|sm90_|matmul|f8f8", re.I)),
    ("fused_triton", re.compile(r"^triton_", re.I)),
)


def categorize(name: str) -> str:
    for category, pattern in CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def kernel_times(prof) -> list[tuple[float, int, str]]:
    """(total ms, calls, name) of every GPU kernel in a torch.profiler run, longest first."""
    kernels = []
    for event in prof.key_averages():
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        if us > 0:
            kernels.append((us / 1000, event.count, event.key[:110]))
    return sorted(kernels, reverse=True)


def top_kernels(kernels: list[tuple[float, int, str]], count: int) -> list[str]:
    return [f"{t:.2f} ms x{c} {n}" for t, c, n in kernels[:count]]


def profile_step(transformer, image_tokens: int, label: str, text_tokens: int = TEXT_TOKENS) -> dict:
    from diffusers import Krea2Pipeline

    side = int(image_tokens**0.5)
    hidden = torch.randn(1, image_tokens, 64, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, text_tokens, 12, 2560, device="cuda", dtype=torch.bfloat16)
    timestep = torch.tensor([0.7], device="cuda", dtype=torch.bfloat16)
    positions = Krea2Pipeline.prepare_position_ids(text_tokens, side, side, "cuda")

    def call():
        with torch.inference_mode():
            return transformer(hidden, text, timestep, positions, return_dict=False)[0]

    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    ms = cuda_ms(call, repeats=5, warmup=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = kernel_times(prof)
    totals: dict[str, float] = {}
    for ms_total, _, name in kernels:
        totals[categorize(name)] = totals.get(categorize(name), 0.0) + ms_total
    entry = {
        "wall_ms": ms,
        "first_call_s": first_s,
        "kernel_ms_by_category": {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "kernel_ms_total": round(sum(totals.values()), 2),
        "top_kernels": top_kernels(kernels, 14),
    }
    log.info("step %s: %s", label, {k: v for k, v in entry.items() if k != "top_kernels"})
    return entry


def variants(results: dict) -> None:
    """fp8 + FA4 steps: unfused with dynamic=True compilation (the previous default), fused projections with
    dynamic=True, and fused with automatic dynamic shapes (sequence length marked dynamic after a second length)."""
    from bench.benchmark import build_full_size
    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason, install_fast_attention
    from krea2.speedups.fp8 import quantize_fp8
    from krea2.speedups.projections import fuse_projections

    out: dict = {}
    results["variants"] = out
    flash4 = flash4_unavailable_reason() is None
    out["flash4"] = flash4

    def compiled(transformer, dynamic) -> None:
        torch._dynamo.reset()
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=dynamic)

    transformer = build_full_size("cuda", raw=False)[0].transformer
    quantize_fp8(transformer)
    install_fast_attention(transformer, FLASH4 if flash4 else None)
    compiled(transformer, True)
    for tokens in (4096, 16384):
        out[f"unfused_dynamic_{tokens}"] = profile_step(transformer, tokens, f"unfused dynamic {tokens}")
    del transformer
    torch.cuda.empty_cache()
    transformer = build_full_size("cuda", raw=False)[0].transformer
    fuse_projections(transformer)
    quantize_fp8(transformer)
    install_fast_attention(transformer, FLASH4 if flash4 else None)
    compiled(transformer, True)
    for tokens in (4096, 16384):
        out[f"fused_dynamic_{tokens}"] = profile_step(transformer, tokens, f"fused dynamic {tokens}")
    compiled(transformer, None)
    profile_step(transformer, 4096, "automatic: first length", text_tokens=TEXT_TOKENS + 16)
    for tokens in (4096, 16384):
        out[f"fused_automatic_{tokens}"] = profile_step(transformer, tokens, f"fused automatic {tokens}")


def step(results: dict, transformer) -> None:
    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason, install_fast_attention
    from krea2.speedups.compile import compile_blocks
    from krea2.speedups.fp8 import quantize_fp8

    out: dict = {}
    results["step"] = out
    quantize_fp8(transformer)
    compile_blocks(transformer)
    for tokens in (4096, 16384):
        out[f"fp8_compiled_sdpa_{tokens}"] = profile_step(transformer, tokens, f"fp8 sdpa {tokens}")
    reason = flash4_unavailable_reason()
    if reason:
        out["flash4"] = reason
        return
    install_fast_attention(transformer, FLASH4)
    torch._dynamo.reset()
    compile_blocks(transformer)
    for tokens in (4096, 16384):
        out[f"fp8_compiled_flash4_{tokens}"] = profile_step(transformer, tokens, f"fp8 flash4 {tokens}")


# ------------------------------------------------------------------------------------------------ encode / decode
def studio_pipeline(pipe):
    """This project's pipeline (PAD-free text encoder) over the stock pipeline's components."""
    from krea2.pipeline import Krea2StudioPipeline

    return Krea2StudioPipeline.from_pipeline(pipe)


def encode_decode(results: dict, pipe) -> dict:
    out: dict = {}
    results["encode_decode"] = out
    studio = studio_pipeline(pipe)
    with torch.inference_mode():
        padded = lambda: pipe.get_text_hidden_states(PROMPT, 512, torch.device("cuda"))  # noqa: E731
        unpadded = lambda: studio.get_text_hidden_states(PROMPT, 512, torch.device("cuda"))  # noqa: E731
        emb_p, mask_p = padded()
        emb_u, mask_u = unpadded()
        out["encode_tokens_padded"] = int(mask_p.shape[1])
        out["encode_tokens_unpadded"] = int(mask_u.shape[1])
        out["encode_unpadded_vs_padded_rel_l2"] = rel(emb_u, emb_p[:, mask_p[0]])
        out["encode_padded_ms"] = cuda_ms(padded)
        out["encode_unpadded_ms"] = cuda_ms(unpadded)
        log.info("encode: %s", out)
        latents = torch.randn(1, 16, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        decode = lambda: pipe.vae.decode(latents, return_dict=False)[0]  # noqa: E731
        out["decode_1024_ms"] = cuda_ms(decode, repeats=5)
        torch.backends.cudnn.benchmark = True
        out["decode_1024_cudnn_benchmark_ms"] = cuda_ms(decode, repeats=5)
        latents = torch.randn(1, 16, 1, 256, 256, device="cuda", dtype=torch.bfloat16)
        out["decode_2048_cudnn_benchmark_ms"] = cuda_ms(decode, repeats=3)
        torch.backends.cudnn.benchmark = False
        out["decode_2048_ms"] = cuda_ms(decode, repeats=3)
        log.info("decode: %s", out)
    return out


def exact_io(results: dict, pipe) -> None:
    """The exact speed-ups around the transformer, each against what it replaces: the text encoder from CUDA graphs
    vs eager (PAD-free both), single-frame vs stock VAE decode, and 8-bit conversion on the GPU vs in numpy."""
    import numpy as np

    from krea2.generation import to_pil_images
    from krea2.speedups.text_graphs import TextEncoderGraphs
    from krea2.speedups.vae_decode import use_single_frame_decode

    out: dict = {}
    results["exact_io"] = out
    studio = studio_pipeline(pipe)
    cuda = torch.device("cuda")
    with torch.inference_mode():
        encode = lambda: studio.get_text_hidden_states(PROMPT, 512, cuda)[0]  # noqa: E731
        eager = encode()
        out["encode_tokens"] = int(eager.shape[1])
        out["encode_eager_ms"] = cuda_ms(encode)
        studio.text_graphs = TextEncoderGraphs(
            pipe.text_encoder, pipe.text_encoder_select_layers, pad_id=pipe.tokenizer.pad_token_id or 0
        )
        start = time.perf_counter()
        graphed = encode()
        torch.cuda.synchronize()
        out["encode_graph_first_call_s"] = time.perf_counter() - start
        out["encode_graph_disabled_reason"] = studio.text_graphs.disabled_reason
        out["encode_graph_vs_eager_rel_l2"] = rel(graphed, eager)
        out["encode_graph_ms"] = cuda_ms(encode)
        out["encode_graph_other_prompt_same_bucket_ms"] = cuda_ms(
            lambda: studio.get_text_hidden_states("a cat", 512, cuda)
        )
        log.info("exact_io encode: %s", out)
        for label, side in (("1024", 128), ("2048", 256)):
            latents = torch.randn(1, 16, 1, side, side, device="cuda", dtype=torch.bfloat16)
            decode = lambda z=latents: pipe.vae.decode(z, return_dict=False)[0]  # noqa: E731
            images = {}
            for name, enabled in (("stock", False), ("single_frame", True)):
                use_single_frame_decode(pipe.vae, enabled)
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                images[name] = decode()
                out[f"decode_{label}_{name}_peak_extra_gb"] = (torch.cuda.max_memory_allocated() - before) / 1e9
                out[f"decode_{label}_{name}_ms"] = cuda_ms(decode, repeats=5)
            difference = (images["single_frame"] - images["stock"]).abs().max()
            out[f"decode_{label}_single_frame_vs_stock_max_abs"] = float(difference)
            out[f"decode_{label}_single_frame_vs_stock_rel_l2"] = rel(images["single_frame"], images["stock"])
            log.info("exact_io decode %s: %s", label, {k: v for k, v in out.items() if f"_{label}_" in k})
        for label, side in (("1024", 1024), ("2048", 2048)):
            decoded = torch.rand(1, 3, side, side, device="cuda", dtype=torch.bfloat16)

            def numpy_path(x=decoded):  # what the manager did before: diffusers' "np" output, then numpy rounding
                array = x.cpu().permute(0, 2, 3, 1).float().numpy()
                return (array * 255).round().astype(np.uint8)

            out[f"to_8bit_{label}_numpy_ms"] = wall_ms(numpy_path)
            out[f"to_8bit_{label}_gpu_ms"] = wall_ms(lambda x=decoded: to_pil_images(x))
            same = np.array_equal(numpy_path(), np.asarray(to_pil_images(decoded)[0])[None])
            out[f"to_8bit_{label}_identical"] = same
        log.info("exact_io: %s", out)


def decode_kernels(results: dict) -> None:
    """The VAE decode alone at 1024² and 2048², side by side: stock (3D), the previous single-frame path (2D
    convolutions inside the stock decoder), the frame decoder eager and with the compiled norm+SiLU; each one's max
    difference from stock, and the fastest one's kernels. Then the mid-block attention alone (head dim 384): SDPA vs
    chunked."""
    import torch.nn.functional as F
    from diffusers import AutoencoderKLQwenImage

    from krea2.speedups.vae_decode import DecodeOps, SingleFrameCausalConv3d, chunked_attention, use_single_frame_decode

    out: dict = {}
    results["decode_kernels"] = out
    vae = AutoencoderKLQwenImage().to("cuda", torch.bfloat16).eval()  # defaults = the Qwen-Image VAE

    def variant(name: str) -> None:
        use_single_frame_decode(vae, name != "stock", compiled=name == "frame_compiled")
        if name == "conv2d_only":  # the stock VAE class over single-frame convolutions: the previous session's path
            vae.__class__ = AutoencoderKLQwenImage
            assert isinstance(vae.decoder.conv_in, SingleFrameCausalConv3d)

    names = ("stock", "conv2d_only", "frame_eager", "frame_compiled")
    for label, side in (("1024", 128), ("2048", 256)):
        latents = torch.randn(1, 16, 1, side, side, device="cuda", dtype=torch.bfloat16)
        decode = lambda z=latents: vae.decode(z, return_dict=False)[0]  # noqa: E731
        images = {}
        with torch.inference_mode():
            for name in names:
                variant(name)
                images[name] = decode()  # (the compiled variant compiles here)
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                out[f"{label}_{name}_ms"] = cuda_ms(decode, repeats=5, warmup=1)
                out[f"{label}_{name}_peak_extra_gb"] = (torch.cuda.max_memory_allocated() - before) / 1e9
                out[f"{label}_{name}_vs_stock_max_abs"] = float((images[name] - images["stock"]).abs().max())
                log.info("decode %s %s: %.1f ms", label, name, out[f"{label}_{name}_ms"])
            variant("frame_compiled")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                decode()
                torch.cuda.synchronize()
        kernels = kernel_times(prof)
        out[f"{label}_frame_compiled_kernels"] = {
            "kernel_ms_total": round(sum(k[0] for k in kernels), 2),
            "top_kernels": top_kernels(kernels, 16),
        }
        log.info("decode kernels %s: %s", label, out[f"{label}_frame_compiled_kernels"])
    softmax = DecodeOps.compiled().softmax
    for label, tokens in (("1024", 128 * 128), ("2048", 256 * 256)):
        qkv = torch.randn(3, 1, tokens, 384, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            sdpa = lambda x=qkv: F.scaled_dot_product_attention(*x[:, :, None])[:, 0]  # noqa: E731
            chunked = lambda x=qkv: chunked_attention(*x, softmax)  # noqa: E731
            out[f"attention_{label}_sdpa_ms"] = cuda_ms(sdpa, repeats=5, warmup=1)
            out[f"attention_{label}_chunked_ms"] = cuda_ms(chunked, repeats=5, warmup=1)
            out[f"attention_{label}_chunked_vs_sdpa_rel_l2"] = rel(chunked(), sdpa())
    log.info("decode: %s", {k: v for k, v in out.items() if not k.endswith("_kernels")})


def wall_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall milliseconds of `fn` (host work included), synchronised before and after."""
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def compiled_encode_decode(results: dict, pipe) -> None:
    """The same encode and decode with the text model and the VAE decoder under torch.compile."""
    out: dict = {}
    results["compiled_encode_decode"] = out
    studio = studio_pipeline(pipe)
    with torch.inference_mode():
        reference, _ = studio.get_text_hidden_states(PROMPT, 512, torch.device("cuda"))
        language_model = pipe.text_encoder.language_model
        language_model.compile(dynamic=True)
        t0 = time.perf_counter()
        compiled, _ = studio.get_text_hidden_states(PROMPT, 512, torch.device("cuda"))
        out["encode_compile_s"] = time.perf_counter() - t0
        out["encode_compiled_vs_eager_rel_l2"] = rel(compiled, reference)
        out["encode_unpadded_compiled_ms"] = cuda_ms(
            lambda: studio.get_text_hidden_states(PROMPT, 512, torch.device("cuda"))
        )
        out["encode_other_length_ms"] = cuda_ms(lambda: studio.get_text_hidden_states("a cat", 512, "cuda"))
        log.info("compiled encode: %s", out)
        latents = torch.randn(1, 16, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        eager = pipe.vae.decode(latents, return_dict=False)[0]
        pipe.vae.decoder.compile(dynamic=True)
        t0 = time.perf_counter()
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
        out["decode_compile_s"] = time.perf_counter() - t0
        out["decode_compiled_vs_eager_rel_l2"] = rel(decoded, eager)
        out["decode_1024_compiled_ms"] = cuda_ms(lambda: pipe.vae.decode(latents, return_dict=False)[0], repeats=5)
        big = torch.randn(1, 16, 1, 256, 256, device="cuda", dtype=torch.bfloat16)
        out["decode_2048_compiled_ms"] = cuda_ms(lambda: pipe.vae.decode(big, return_dict=False)[0], repeats=3)
        log.info("compiled decode: %s", out)


def tuned_step(results: dict, transformer) -> None:
    """The fp8 step (SDPA) as compiled by default (its generated code logged), then with inductor's coordinate-descent
    tuning of the fused (quantisation) kernels."""
    import torch._inductor.config as inductor_config

    from krea2.speedups.compile import compile_blocks
    from krea2.speedups.fp8 import quantize_fp8

    out: dict = {}
    results["tuned_step"] = out
    quantize_fp8(transformer)
    compile_blocks(transformer)
    torch._logging.set_logs(output_code=True)
    out["fp8_default_4096"] = profile_step(transformer, 4096, "default 4096")
    torch._logging.set_logs(output_code=False)
    out["fp8_default_16384"] = profile_step(transformer, 16384, "default 16384")
    inductor_config.coordinate_descent_tuning = True
    torch._dynamo.reset()
    compile_blocks(transformer)
    for tokens in (4096, 16384):
        out[f"fp8_coordinate_descent_{tokens}"] = profile_step(transformer, tokens, f"tuned {tokens}")
    inductor_config.coordinate_descent_tuning = False


def flash4_tiles(results: dict) -> None:
    """FA4's SM90 forward at Krea 2's shapes (48 query / 12 KV heads of 128) with other tile shapes and GQA packing than
    its defaults (128x128, packed): time, TFLOP/s and the difference from the default's output."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out: dict = {}
    results["flash4_tiles"] = out
    configs = [(None, None), ((128, 176), None), ((128, 160), None), ((128, 192), None), ((128, 112), None)]
    configs += [(None, False), ((128, 176), False)]
    for label, seq in (("1024", 4096 + TEXT_TOKENS), ("2048", 16384 + TEXT_TOKENS)):
        q = torch.randn(1, seq, 48, 128, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, seq, 12, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        flops = 4 * seq * seq * 48 * 128
        reference = _flash_attn_fwd(q, k, v)[0]
        for tile, pack in configs:
            name = f"{label}_tile{'default' if tile is None else 'x'.join(map(str, tile))}_pack{pack}"
            try:
                run = lambda t=tile, p=pack, x=(q, k, v): _flash_attn_fwd(*x, tile_mn=t, pack_gqa=p)[0]  # noqa: E731
                ms = cuda_ms(run, repeats=10, warmup=2)
                out[name] = {"ms": ms, "tflops": flops / ms / 1e9, "vs_default_rel_l2": rel(run(), reference)}
            except Exception as error:  # noqa: BLE001 - a config the kernel refuses is a result too
                out[name] = {"error": error_summary(error, 160)}
            log.info("flash4 %s: %s", name, out[name])


def fp8_sdpa_transformer():
    """The full-size Turbo transformer as the fast path prepares it (fused projections, fp8), with SDPA attention."""
    from bench.benchmark import build_full_size
    from krea2.speedups.attention import install_fast_attention
    from krea2.speedups.fp8 import quantize_fp8
    from krea2.speedups.projections import fuse_projections

    transformer = build_full_size("cuda", raw=False)[0].transformer
    fuse_projections(transformer)
    quantize_fp8(transformer)
    install_fast_attention(transformer, None)
    return transformer


def compiled_step(transformer, name: str) -> dict:
    """Compile the blocks afresh under the current inductor settings, run a first length (compiles, and marks the
    sequence dynamic), then profile the 1024² step. Records the seconds the first call took."""
    from krea2.speedups.compile import compile_blocks

    torch._dynamo.reset()
    compile_blocks(transformer)
    start = time.perf_counter()
    profile_step(transformer, 4096, f"{name} first length", text_tokens=TEXT_TOKENS + 16)
    entry = profile_step(transformer, 4096, name)
    entry["first_length_s"] = time.perf_counter() - start
    return entry


def multi_kernel(results: dict) -> None:
    """The compiled fp8 step (fused projections, SDPA) with inductor's defaults, then with `triton.multi_kernel`
    (each reduction compiled persistent and looped, the faster picked at run time): the quantisation kernels."""
    import torch._inductor.config as inductor_config

    out: dict = {}
    results["multi_kernel"] = out
    transformer = fp8_sdpa_transformer()
    for name, setting in (("default", 0), ("multi_kernel", 1)):
        inductor_config.triton.multi_kernel = setting
        out[name] = compiled_step(transformer, name)
    inductor_config.triton.multi_kernel = 0


def max_autotune(results: dict) -> None:
    """The compiled fp8 step (fused projections, SDPA) with inductor's defaults, then with GEMM autotuning
    (`max_autotune_gemm`: cuBLAS against inductor's Triton scaled-mm templates per shape, epilogues fused into the
    templates that win): the GEMMs and the memory-bound kernels around them."""
    import torch._inductor.config as inductor_config

    out: dict = {}
    results["max_autotune"] = out
    transformer = fp8_sdpa_transformer()
    inductor_config.max_autotune_gemm_backends = "ATEN,TRITON"
    for name, setting in (("default", False), ("max_autotune_gemm", True)):
        inductor_config.max_autotune_gemm = setting
        out[name] = compiled_step(transformer, name)
    inductor_config.max_autotune_gemm = False


def quantized_attention(results: dict) -> None:
    """The Triton 8-bit attention (bench/quantized_attention.py) at Krea 2's shapes against SDPA in the same run:
    kernel time and TFLOP/s per tile configuration, int8 or fp8 Q·K, with and without fp32 sums across key blocks;
    the quantisation's own cost (eager and compiled); relative L2 against bf16 SDPA for plain random inputs and for
    peaked ones (queries x4: softmax logits with a standard deviation of 4)."""
    out: dict = {}
    results["quantized_attention"] = out
    for label, seq in (("1024", 4096 + TEXT_TOKENS), ("2048", 16384 + TEXT_TOKENS)):
        out.update(quantized_attention_case(label, seq))


def quantized_attention_case(label: str, seq: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.quantized_attention import (
        FP8,
        INT8,
        quantize_per_token,
        quantize_value,
        quantized_attention_kernel,
        quantized_attention_reference,
    )

    # (block_m, block_n, warps, stages, fp32 sums across key blocks, warp specialisation)
    configs = [(128, 128, 8, 3, False, False), (64, 128, 4, 3, False, False), (128, 128, 8, 3, False, True),
               (64, 128, 4, 3, False, True), (128, 128, 8, 2, False, True), (128, 64, 4, 3, False, True),
               (128, 128, 4, 2, False, True), (128, 128, 8, 3, True, False)]  # fmt: skip
    out: dict = {}
    q = torch.randn(1, seq, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, seq, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flops = 4 * seq * seq * HEADS * HEAD_DIM

    def sdpa(query: torch.Tensor, backend) -> torch.Tensor:
        with sdpa_kernel(backend):
            args = (query.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return F.scaled_dot_product_attention(*args, enable_gqa=True).transpose(1, 2)

    def quantize(query: torch.Tensor, dtype: torch.dtype) -> tuple:
        return (*quantize_per_token(query, dtype), *quantize_per_token(k, dtype, smooth=True), *quantize_value(v))

    compiled_quantize = torch.compile(quantize)
    references = {"random": sdpa(q, SDPBackend.FLASH_ATTENTION), "peaked": sdpa(q * 4, SDPBackend.FLASH_ATTENTION)}
    ms = cuda_ms(lambda: sdpa(q, SDPBackend.CUDNN_ATTENTION))
    out[f"{label}_sdpa_cudnn"] = {"ms": ms, "tflops": flops / ms / 1e9}
    for dtype, dtype_name in ((INT8, "int8"), (FP8, "fp8")):
        inputs, peaked = quantize(q, dtype), quantize(q * 4, dtype)
        out[f"{label}_{dtype_name}_quantize_eager_ms"] = cuda_ms(lambda d=dtype: quantize(q, d))
        out[f"{label}_{dtype_name}_quantize_compiled_ms"] = cuda_ms(lambda d=dtype: compiled_quantize(q, d))
        reference_quantized = quantized_attention_reference(q, k, v, dtype)
        out[f"{label}_{dtype_name}_reference_rel_l2"] = rel(reference_quantized, references["random"])
        for block_m, block_n, warps, stages, split, specialize in configs:
            name = f"{label}_{dtype_name}_m{block_m}_n{block_n}_w{warps}_s{stages}_split{split}_ws{specialize}"
            options = {"block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages}
            options |= {"split_acc": split, "warp_specialize": specialize}

            def run(x: tuple = inputs, o: dict = options) -> torch.Tensor:
                return quantized_attention_kernel(*x, **o)

            try:
                result = run()
                ms = cuda_ms(run)
                out[name] = {
                    "ms": ms,
                    "tflops": flops / ms / 1e9,
                    "rel_l2_vs_sdpa": rel(result, references["random"]),
                    "rel_l2_vs_dequantised_sdpa": rel(result, reference_quantized),
                    "peaked_rel_l2_vs_sdpa": rel(run(peaked), references["peaked"]),
                }
            except Exception as error:  # noqa: BLE001 - a config the compiler refuses is a result too
                out[name] = {"error": f"{type(error).__name__}: {str(error)[-600:]}"}
            log.info("quantized attention %s: %s", name, out[name])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--sections",
        default="attention,gemm,encode,step",
        help="also: exact_io, decode_kernels, compiled_encode, tuned_step, variants, flash4_tiles, multi_kernel, "
        "quantized_attention, max_autotune",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sections = args.sections.split(",")
    env = environment()
    results: dict = {"environment": env, "command": "python " + " ".join(sys.argv)}
    path = result_path(args.out, env, "profile-" + args.sections.replace(",", "-"))

    def run(name: str, fn: Callable[[], object]) -> None:
        """One section; a failure is recorded and the other sections still run."""
        if name not in sections:
            return
        try:
            fn()
        except Exception as error:
            log.exception("%s failed", name)
            results[f"{name}_error"] = repr(error)
        path.write_text(json.dumps(results, indent=2))

    run("attention", lambda: attention(results))
    run("gemm", lambda: gemm(results))
    run("variants", lambda: variants(results))
    run("decode_kernels", lambda: decode_kernels(results))
    run("flash4_tiles", lambda: flash4_tiles(results))
    run("multi_kernel", lambda: multi_kernel(results))
    run("quantized_attention", lambda: quantized_attention(results))
    run("max_autotune", lambda: max_autotune(results))
    if {"encode", "exact_io", "step", "compiled_encode", "tuned_step"} & set(sections):
        turbo, _ = build_full_size("cuda", raw=False)
        # Order matters: the last two quantise the transformer in place.
        run("encode", lambda: encode_decode(results, turbo))
        run("exact_io", lambda: exact_io(results, turbo))
        run("compiled_encode", lambda: compiled_encode_decode(results, turbo))
        run("tuned_step", lambda: tuned_step(results, turbo.transformer))
        run("step", lambda: step(results, turbo.transformer))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
