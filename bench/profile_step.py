"""Where one full-size Krea 2 step's time goes, kernel by kernel: worth re-running when torch, cuDNN, torchao or
FlashAttention change. Run on a CUDA GPU:

    python bench/profile_step.py --out bench/results [--sections attention,step,exact_io,decode_kernels]

Sections (each result is written as soon as it exists, so a run cut short still reports what it measured):
  attention       the attention call at 1024² and 2048² shapes: SDPA's kernels (with the stock head repetition and
                  with native grouped-query), FlashAttention-4, SageAttention 1 and cuDNN's fp8 attention where each
                  runs;
  step            one transformer call as the app's fast path prepares it (`speedups.apply`: fused projections, fp8,
                  compiled blocks), profiled by kernel category, with SDPA and with FlashAttention-4;
  exact_io        the exact speed-ups around the transformer, each against what it replaces: text encoder from CUDA
                  graphs vs eager, single-frame vs stock VAE decode, 8-bit conversion on the GPU vs in numpy;
  decode_kernels  the VAE decode alone (stock, frame decoder eager and compiled) by kernel, and the mid-block's
                  head-dim-384 attention: SDPA vs chunked.
The experiments that settled (fp8 GEMM scaling, compiled text encoder and VAE, inductor tuning, FA4 tiles, 8-bit Triton
attention) are in bench/NOTES.md with the commit that last had their code.
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


def step(results: dict, turbo) -> None:
    """One call of the Turbo transformer with the fast path on as `speedups.apply` puts it on (fused projections, fp8,
    compiled blocks), at 1024² and 2048²: with SDPA, then with FlashAttention-4 where it runs."""
    from dataclasses import replace

    from krea2.speedups import FastPathOptions, apply
    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason

    out: dict = {}
    results["step"] = out
    pipe = studio_pipeline(turbo)
    options = FastPathOptions(fp8=True, compile=True)
    variants = [("sdpa", options)]
    if (reason := flash4_unavailable_reason()) is None:
        variants.append(("flash4", replace(options, attention=FLASH4)))
    else:
        out["flash4"] = reason
    for name, variant in variants:
        apply([pipe], variant, placement="gpu", device=torch.device("cuda"))
        torch._dynamo.reset()  # compile afresh for the modules as they are now
        for tokens in (4096, 16384):
            out[f"fp8_compiled_{name}_{tokens}"] = profile_step(pipe.transformer, tokens, f"fp8 {name} {tokens}")


# ------------------------------------------------------------------------------------------------ encode / decode
def studio_pipeline(pipe):
    """This project's pipeline (PAD-free text encoder) over the stock pipeline's components."""
    from krea2.pipeline import Krea2StudioPipeline

    return Krea2StudioPipeline.from_pipeline(pipe)


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

    from krea2.speedups.vae_decode import DecodeOps, chunked_attention, use_single_frame_decode

    out: dict = {}
    results["decode_kernels"] = out
    vae = AutoencoderKLQwenImage().to("cuda", torch.bfloat16).eval()  # defaults = the Qwen-Image VAE

    def variant(name: str) -> None:
        use_single_frame_decode(vae, name != "stock", compiled=name == "frame_compiled")

    names = ("stock", "frame_eager", "frame_compiled")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--sections", default="attention,step", help="also: exact_io, decode_kernels")
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
    run("decode_kernels", lambda: decode_kernels(results))
    if {"exact_io", "step"} & set(sections):
        turbo, _ = build_full_size("cuda", raw=False)
        run("exact_io", lambda: exact_io(results, turbo))
        run("step", lambda: step(results, turbo))  # last: it quantises the transformer in place
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
