"""Stock diffusers Krea2Pipeline vs Krea 2 Studio's ModelManager, side by side in one process, at full size.

The full-size architecture is built with random weights (diffusers' class defaults are the real Krea 2 configs, and
a Qwen3-VL-4B-sized text encoder), so the work per image is exactly the real model's. Run on a CUDA GPU:

    python bench/benchmark.py --cases turbo1024,turbo2048 --modes exact,fast --out bench/results
    python bench/benchmark.py --cases raw1024 --modes fast --step-cache 0.05,0.1 --out bench/results
    python bench/benchmark.py --memory-24gb --out bench/results

Order matters and is fixed: stock first (its modules untouched), then ours: padfree (eager), exact (bf16: PAD-free +
regional compile + FlashAttention-4 where it runs + the denoiser's CUDA graphs), fast (+ fused projections + fp8),
fp8attn (+ cuDNN fp8 attention, optional and lossy), then Raw's step cache per threshold, because each of these
changes the shared transformer modules in place. Each mode asks the manager for more of the fast path
(`ModelManager.apply_fast_path`, then `warm_up`), so the benchmark measures the app's own path. Every mode of ours
includes the exact speed-ups of the shared components: PAD-free text, the text encoder from CUDA graphs, single-frame
VAE decode and 8-bit conversion on the GPU.

    python bench/benchmark.py --smoke --out /tmp/smoke

runs the same script on the CPU against the demo checkpoints, small and short (tests/test_benchmark_smoke.py does, so
the script cannot rot between GPU sessions); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from krea2.checkpoints import RAW, TURBO, get_spec
from krea2.generation import MAX_SEQUENCE_LENGTH
from krea2.loading import PipelineLoader, build_pipeline_sharing, derive_prompt_template_lengths
from krea2.manager import ModelManager
from krea2.preview import QWEN_IMAGE_LATENT_RGB
from krea2.request import GenerationRequest
from krea2.speedups import FastPathOptions
from krea2.speedups.step_cache import step_cache_of

log = logging.getLogger("bench")
PROMPT = "a photograph of a red fox standing in fresh snow at dawn, soft light, shallow depth of field"
NEGATIVE = "blurry, low quality"
CASES = {  # each checkpoint at its own defaults (krea2/checkpoints.py)
    f"{spec.key}{side}": {
        "checkpoint": spec.key, "width": side, "height": side, "steps": spec.default_steps,
        "guidance": spec.default_guidance,
    }
    for spec, side in ((TURBO, 1024), (TURBO, 2048), (RAW, 1024))
}  # fmt: skip
# --smoke: the demo checkpoints on the CPU, small and short, to check the script (its numbers mean nothing).
SMOKE_SIDE, SMOKE_MAX_STEPS = 256, 2


# ------------------------------------------------------------------------------------------------ full-size model
def build_full_size(device: str, seed: int = 0, raw: bool = True):
    """Turbo pipeline + Raw transformer (None when `raw` is false), full size, random bf16 weights, built directly on
    `device`."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        Krea2Pipeline,
        Krea2Transformer2DModel,
    )
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from krea2.demo import build_tokenizer

    def transformer(s: int) -> Krea2Transformer2DModel:
        torch.manual_seed(s)
        model = Krea2Transformer2DModel()  # class defaults = the real 12.8B Krea 2 transformer
        for name, module in model.named_modules():  # as from_pretrained does with _keep_in_fp32_modules
            if name.split(".")[-1] in Krea2Transformer2DModel._keep_in_fp32_modules:
                module.float()
        return model.eval()

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            turbo_t, raw_t = transformer(seed + 1), transformer(seed + 2) if raw else None
            torch.manual_seed(seed)
            text_config = {
                "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 5_000_000,
                "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
            }  # fmt: skip
            # The vision tower never runs for text-to-image; a small one keeps memory for what does run.
            vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 2560}
            encoder = Qwen3VLModel(Qwen3VLConfig(text_config=text_config, vision_config=vision)).eval()
            vae = AutoencoderKLQwenImage().eval()  # defaults = the Qwen-Image VAE
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400
    )
    turbo = Krea2Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=build_tokenizer(), transformer=turbo_t,
        is_distilled=True,
    )  # fmt: skip
    derive_prompt_template_lengths(turbo)
    return turbo, raw_t


class InMemoryLoader:
    """The manager's loader interface over already-built pipelines (no files: the weights are random)."""

    def __init__(self, turbo, raw_transformer) -> None:
        self.turbo, self.raw_transformer = turbo, raw_transformer

    def load_full(self, spec):
        return self.turbo

    def load_transformer(self, spec):
        return self.raw_transformer

    def latent_rgb(self, spec):
        return QWEN_IMAGE_LATENT_RGB


# ------------------------------------------------------------------------------------------------ timing helpers
CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_peak() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if CUDA else 0.0


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, out


def stock_pipelines(turbo, raw_transformer):
    from diffusers import Krea2Pipeline

    raw = build_pipeline_sharing(turbo, raw_transformer, RAW)
    raw = Krea2Pipeline(**raw.components, text_encoder_select_layers=raw.text_encoder_select_layers, is_distilled=False)
    derive_prompt_template_lengths(raw)
    pipes = {"turbo": turbo, "raw": raw}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def run_stock(pipe, case: dict, seed: int):
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE if case["guidance"] > 0 else None,
        guidance_scale=case["guidance"],
        num_inference_steps=case["steps"],
        width=case["width"],
        height=case["height"],
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type="np",
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    ).images[0]


def run_ours(manager: ModelManager, case: dict, seed: int):
    """End to end to a finished (PIL) image, as stock's run ends at its finished (numpy) image."""
    manager.prompt_cache.clear()  # honest end to end: the text encoder runs every time
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, **case)
    return manager.generate(request)


def final_latents(manager: ModelManager, case: dict, seed: int) -> torch.Tensor:
    """The denoised latents of the same request, before the VAE: the fp8 error that the image comparison (dominated
    by uint8 rounding and the decoder) cannot show. Same pipeline arguments as `ModelManager.generate`."""
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, **case)
    pipe = manager.pipes[request.checkpoint]
    if (cache := step_cache_of(pipe.transformer)) is not None:
        cache.reset()  # as `krea2.generation.generate` does: no residuals from the previous image
    with torch.inference_mode():
        return pipe(
            **manager.pipeline_inputs(request),
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="latent",
        ).images.float()


def as_array(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.float32) / 255


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def velocity_error(manager: ModelManager, change) -> float:
    """Relative L2 of one Turbo transformer call's output (velocity) after `change` (fp8: the manager's fast path with
    more switched on) against before it, same inputs."""
    transformer = manager.pipes[TURBO.key].transformer
    torch.manual_seed(0)
    dev, dtype, config = next(transformer.parameters()).device, next(transformer.parameters()).dtype, transformer.config
    hidden = torch.randn(1, 4096, config.in_channels, device=dev, dtype=dtype)
    text = torch.randn(1, 64, config.num_text_layers, config.text_hidden_dim, device=dev, dtype=dtype)
    timestep = torch.tensor([0.7], device=dev, dtype=dtype)
    from diffusers import Krea2Pipeline

    positions = Krea2Pipeline.prepare_position_ids(64, 64, 64, dev)
    # Eager on both sides: the compiled blocks of the previous mode would otherwise recompile for the changed modules.
    # (A denoiser graph runs its first call of a shape eagerly, and `change` puts fresh ones on.)
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        inputs = {"hidden_states": hidden, "encoder_hidden_states": text, "timestep": timestep}
        ref = transformer(**inputs, position_ids=positions, return_dict=False)[0].float()
        change()
        out = transformer(**inputs, position_ids=positions, return_dict=False)[0].float()
    return float((out - ref).norm() / ref.norm())


# ------------------------------------------------------------------------------------------------ main benchmark
def build_smoke():
    """The demo checkpoints on the CPU, loaded as the app loads them: checks this script without a GPU."""
    from krea2.demo import demo_checkpoints

    loader = PipelineLoader(demo_checkpoints(), torch.float32)
    return loader.load_full(TURBO), loader.load_transformer(RAW)


def smoke_case(case: dict) -> dict:
    return {**case, "width": SMOKE_SIDE, "height": SMOKE_SIDE, "steps": min(case["steps"], SMOKE_MAX_STEPS)}


def benchmark(
    case_names: list[str],
    repeats: int,
    modes: list[str],
    smoke: bool = False,
    step_cache_thresholds: tuple[float, ...] = (),
) -> dict:
    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason
    from krea2.speedups.denoiser_graphs import denoiser_graphs_of
    from krea2.speedups.fp8_attention import CUDNN_FP8, cudnn_fp8_unavailable_reason

    t0 = time.perf_counter()
    turbo, raw_transformer = build_smoke() if smoke else build_full_size("cuda")
    log.info("built %s in %.1f s", "the demo model" if smoke else "the full-size model", time.perf_counter() - t0)
    cases = {name: smoke_case(CASES[name]) if smoke else CASES[name] for name in case_names}
    warmup_size = (SMOKE_SIDE, SMOKE_SIDE) if smoke else (1024, 1024)
    stock = stock_pipelines(turbo, raw_transformer)
    results: dict = {"cases": {}, "errors": {}}

    # 1. Stock, untouched modules.
    stock_images = {}
    for name, case in cases.items():
        pipe = stock[case["checkpoint"]]
        run_stock(pipe, {**case, "steps": min(case["steps"], 2)}, seed=1)  # warm-up (kernels, allocator)
        reset_peak()
        times, image = timed(lambda p=pipe, c=case: run_stock(p, c, seed=1), repeats)
        stock_images[name] = image
        results["cases"][name] = {
            **case,
            "stock_s": statistics.median(times),
            "stock_runs_s": times,
            "stock_peak_gb": peak_gb(),
        }
        log.info("stock %s: %s", name, [f"{t:.3f}" for t in times])

    # 2. Ours. The manager over the same component objects, both checkpoints resident at once; every mode adds its
    #    speed-ups through the manager, as the app applies them (krea2/speedups/fast_path.py).
    padfree = FastPathOptions(text_graphs=CUDA, denoiser_graphs=CUDA)  # denoiser graphs come with compile
    manager = ModelManager(InMemoryLoader(turbo, raw_transformer), placement="gpu", options=padfree)
    manager.start(background=False)
    results["both_checkpoints_resident_gb"] = torch.cuda.memory_allocated() / 1e9 if CUDA else 0.0

    # The last uncached mode's images: the step cache's speed and error are measured against that mode.
    reference: dict[str, tuple[str, np.ndarray]] = {}
    first_latents: dict[str, tuple[str, torch.Tensor]] = {}  # the first mode's final latents (bf16, no fp8)

    def measure(mode: str, names: list[str] = case_names) -> None:
        for name in names:
            case = cases[name]
            run_ours(manager, {**case, "steps": min(case["steps"], 2)}, seed=1)  # warm-up at this size
            reset_peak()
            times, result = timed(lambda c=case: run_ours(manager, c, seed=1), repeats)
            image = as_array(result)
            entry = results["cases"][name]
            entry[f"{mode}_s"] = statistics.median(times)
            entry[f"{mode}_runs_s"] = times
            entry[f"{mode}_speedup"] = entry["stock_s"] / entry[f"{mode}_s"]
            entry[f"{mode}_peak_gb"] = peak_gb()
            entry[f"{mode}_phases_ms"] = result.timings.as_ms()
            if (graphs := denoiser_graphs_of(manager.pipes[case["checkpoint"]].transformer)) is not None:
                entry[f"{mode}_denoiser_graphs"] = graphs.disabled_reason or f"{len(graphs.graphs)} captured"
            entry[f"{mode}_vs_stock_max_abs_pixel"] = float(np.abs(image - stock_images[name]).max())
            entry[f"{mode}_vs_stock_rel_l2"] = rel_l2(image, stock_images[name])
            if cache := step_cache_of(manager.pipes[case["checkpoint"]].transformer):  # the last timed run's
                entry[f"{mode}_skipped_calls"] = f"{cache.skipped}/{cache.skipped + cache.computed}"
            latents = final_latents(manager, case, seed=1)
            base, base_latents = first_latents.setdefault(name, (mode, latents))
            if base != mode:
                entry[f"{mode}_final_latent_rel_l2_vs_{base}"] = rel_l2(latents.cpu(), base_latents.cpu())
            if not mode.startswith("cache"):
                reference[name] = (mode, image)
            else:
                if name in reference:
                    base, base_image = reference[name]
                    entry[f"{mode}_on_top_of"] = base
                    entry[f"{mode}_vs_{base}_speedup"] = entry[f"{base}_s"] / entry[f"{mode}_s"]
                    entry[f"{mode}_vs_{base}_max_abs_pixel"] = float(np.abs(image - base_image).max())
                    entry[f"{mode}_vs_{base}_rel_l2"] = rel_l2(image, base_image)
            log.info(
                "%s %s: %s (x%.2f) phases %s peak %.1f GB max|diff| %.4f",
                mode, name, [f"{t:.3f}" for t in times], entry[f"{mode}_speedup"], entry[f"{mode}_phases_ms"],
                entry[f"{mode}_peak_gb"], entry[f"{mode}_vs_stock_max_abs_pixel"],
            )  # fmt: skip

    def recompile(key: str) -> None:
        """Compile both transformers afresh for the modules as they are now, and warm up, as the app does."""
        torch._dynamo.reset()
        results[key] = manager.warm_up(sizes=(warmup_size,), batch_sizes=(1,))

    attention = FLASH4 if flash4_unavailable_reason() is None else None
    results["attention"] = attention or "sdpa"
    results["flash4_unavailable_reason"] = flash4_unavailable_reason()
    # Each mode adds speed-ups, in this order: exact = compile + FA4 attention (exact attention) + denoiser graphs;
    # fast = + fused projections and fp8.
    exact = replace(padfree, compile=True, attention=attention)
    fast = replace(exact, fp8=True)
    if "padfree" in modes:
        measure("padfree")  # exact, eager, stock attention processor
    if "exact" in modes:
        manager.apply_fast_path(exact)
        recompile("compile_warmup_s")
        measure("exact")
    if "fast" in modes or "fp8attn" in modes:
        results["errors"]["fp8_velocity_rel_l2"] = velocity_error(manager, lambda: manager.apply_fast_path(fast))
        results["both_checkpoints_resident_fp8_gb"] = torch.cuda.memory_allocated() / 1e9 if CUDA else 0.0
    if "fast" in modes:
        recompile("fp8_compile_warmup_s")
        measure("fast")
    if "nographs" in modes:  # fast without the denoiser's CUDA graphs: what they are worth, side by side
        manager.apply_fast_path(replace(manager.requested_options, denoiser_graphs=False))
        measure("nographs", [n for n in case_names if cases[n]["checkpoint"] == TURBO.key])
    if "fp8attn" in modes:  # optional, lossy: fp8 attention (cuDNN) on top of fast
        results["cudnn_fp8_unavailable_reason"] = cudnn_fp8_unavailable_reason()
        if results["cudnn_fp8_unavailable_reason"] is None:
            results["errors"]["fp8_attention_velocity_rel_l2_vs_fast"] = velocity_error(
                manager, lambda: manager.apply_fast_path(replace(fast, attention=CUDNN_FP8))
            )
            recompile("fp8attn_compile_warmup_s")
            measure("fp8attn")
    # The step cache on top of the last mode measured, one mode per threshold: speed and error against it.
    guided_cases = [n for n in case_names if not get_spec(cases[n]["checkpoint"]).is_distilled]
    for threshold in step_cache_thresholds if guided_cases else ():
        manager.apply_fast_path(replace(manager.requested_options, step_cache=threshold))
        measure(f"cache{threshold:g}", guided_cases)
    return results


def memory_24gb(repeats: int) -> dict:
    """A simulated 24 GB card: both checkpoints warm through group offload; seconds per image."""
    # Random init is fast on the GPU and slow on the CPU: build there, move to CPU RAM, then cap the allocator.
    turbo, raw_transformer = build_full_size("cuda")
    for module in (turbo.transformer, turbo.text_encoder, turbo.vae, raw_transformer):
        module.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(24 * 1024**3 / total)
    manager = ModelManager(InMemoryLoader(turbo, raw_transformer), placement="offload", device="cuda")
    manager.start(background=False)
    out: dict = {"placement": str(manager.placement), "cases": {}}
    for name in ("turbo1024", "raw1024"):
        case = CASES[name]
        if name == "raw1024":
            case = {**case, "steps": 8}  # per-step cost is what matters; 52 steps would not fit the lease
        try:
            run_ours(manager, {**case, "steps": 1}, seed=1)
            reset_peak()
            times, _ = timed(lambda c=case: run_ours(manager, c, seed=1), repeats)
        except Exception as error:  # noqa: BLE001 - record the failure; the other case's numbers still count
            out["cases"][name] = {**case, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
            log.error("24GB %s failed: %s", name, error)
            continue
        out["cases"][name] = {
            **case,
            "seconds": statistics.median(times),
            "runs_s": times,
            "peak_gb": peak_gb(),
        }
        log.info("24GB %s: %s", name, times)
    return out


def options_record(options) -> dict[str, str]:
    """A manager's fast-path options as a results file records them (every value as text)."""
    return {key: str(value) for key, value in vars(options).items()}


def environment() -> dict:
    import diffusers
    import transformers

    info = {
        "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu-smoke",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torchao", "flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cudnn-frontend", "nvidia-cudnn-cu13"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            pass
    return info


def result_path(out: str, env: dict, tag: str) -> Path:
    """Where a run's JSON goes (the folder is created): named by its start (date and minute, so runs of one day do not
    overwrite each other), GPU and what it measured."""
    Path(out).mkdir(parents=True, exist_ok=True)
    stamp = env["date"][:16].replace(":", "")  # 2026-11-26T0822
    return Path(out) / f"{stamp}_{env['gpu'].replace(' ', '-')}_{tag}.json"


def write_result(out: str, payload: dict, tag: str) -> Path:
    """Every benchmark's last step: the payload (its "environment" included) gets the command that ran it, is written
    to its `result_path` and printed. Returns the path."""
    payload["command"] = "python " + " ".join(sys.argv)
    path = result_path(out, payload["environment"], tag)
    text = json.dumps(payload, indent=2)
    path.write_text(text)
    print(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="turbo1024,turbo2048,raw1024")
    parser.add_argument(
        "--modes",
        default="exact,fast",
        help="padfree (eager), exact (+compile, FA4, CUDA graphs), fast (+fused projections, fp8), nographs (fast "
        "without the denoiser's CUDA graphs, Turbo only), fp8attn (+cuDNN fp8 attention)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--step-cache", default="", help="Raw's first-block cache thresholds to measure after the modes, e.g. 0.05,0.1"
    )
    parser.add_argument("--memory-24gb", action="store_true")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = True

    env = environment()
    if args.memory_24gb:
        payload = {"environment": env, "memory_24gb": memory_24gb(args.repeats)}
        tag = "memory24gb"
    else:
        cases = args.cases.split(",")
        payload = {
            "environment": env,
            "repeats": args.repeats,
            **benchmark(
                cases,
                args.repeats,
                args.modes.split(","),
                args.smoke,
                tuple(float(t) for t in args.step_cache.split(",") if t),
            ),
        }
        tag = "-".join(cases) + "_" + args.modes.replace(",", "-")
    write_result(args.out, payload, tag)
    gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
