"""Starting from an image, stock against ours, side by side in one process, at full size (issue 17's benchmark).

Stock: diffusers' Krea2Pipeline as a user of 0.42.1 would run img2img without our code: the init image through the
stock VAE encoder, noised to the schedule's tail, then the stock pipeline with `latents=` and `sigmas=` (the shortened
schedule). Ours: `ModelManager.generate` with the request's `source`, the fast path on (the same modes as
bench/benchmark.py). Also the VAE alone: our single-frame encode of the init image against the fast path's decode of
its latents, both at the case's size. Run on a CUDA GPU:

    python bench/img2img_benchmark.py --cases turbo1024 --strength 0.6 --mode fast --out bench/results
    python bench/img2img_benchmark.py --smoke --out /tmp/smoke        # the demo checkpoints on the CPU (CI)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import (  # the sibling script's helpers (path set above)
    CASES,
    NEGATIVE,
    PROMPT,
    InMemoryLoader,
    build_full_size,
    build_smoke,
    environment,
    peak_gb,
    reset_peak,
    smoke_case,
    stock_pipelines,
    sync,
    timed,
    write_result,
)

from krea2.image_to_image import encode_image, pixels_of, schedule_tail, shifted_sigmas
from krea2.manager import ModelManager
from krea2.request import GenerationRequest, ImageInput
from krea2.speedups import FastPathOptions

log = logging.getLogger("bench.img2img")
CUDA = torch.cuda.is_available()


def mode_options(mode: str) -> FastPathOptions:
    """bench/benchmark.py's modes: exact = compile + FlashAttention-4 where it runs + CUDA graphs; fast = + fp8. The
    smoke run keeps the eager PAD-free path (compiling on a 2-core CPU would be most of CI's time)."""
    from dataclasses import replace

    from krea2.speedups.attention import FLASH4, flash4_unavailable_reason

    padfree = FastPathOptions(text_graphs=CUDA, denoiser_graphs=CUDA)
    if mode == "padfree":
        return padfree
    exact = replace(padfree, compile=True, attention=FLASH4 if flash4_unavailable_reason() is None else None)
    return exact if mode == "exact" else replace(exact, fp8=True)


def init_image(width: int, height: int) -> Image.Image:
    """A smooth, structured picture (gradients and a disc): something the VAE has to encode, not flat noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2).astype(np.float32)
    rgb = np.stack([x / width, y / height, disc], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def run_stock(pipe, case: dict, image: Image.Image, strength: float, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Stock diffusers only: encode, noise to the tail's first sigma, `latents=` + `sigmas=`. Returns the image and the
    init image's latents (packed, normalised), which ours are compared with."""
    device = pipe._execution_device
    generator = [torch.Generator("cpu").manual_seed(seed)]
    with torch.no_grad():
        pixels = pixels_of(image, device)
        latents = encode_image(pipe, pixels)  # the stock VAE (this pipeline's modules are untouched)
        channels = pipe.transformer.config.in_channels // 4
        noise = pipe.prepare_latents(1, channels, case["height"], case["width"], latents.dtype, device, generator)
        sigmas = schedule_tail(case["steps"], strength)
        first = shifted_sigmas(pipe, sigmas, noise.shape[1])[0].item()
        start = ((1 - first) * latents + first * noise.float()).to(pipe.transformer.dtype)
        picture = pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE if case["guidance"] > 0 else None,
            guidance_scale=case["guidance"], width=case["width"], height=case["height"], latents=start,
            sigmas=sigmas, num_inference_steps=len(sigmas), output_type="np",
        ).images[0]  # fmt: skip
        return picture, latents


def run_ours(manager: ModelManager, case: dict, image: Image.Image, strength: float, seed: int):
    manager.prompt_cache.clear()  # end to end, as stock: the text encoder runs every time
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, source=ImageInput(image, strength),
                                **case)  # fmt: skip
    return manager.generate(request)


def vae_times(manager: ModelManager, case: dict, image: Image.Image, repeats: int) -> dict:
    """Our single-frame encode of the init image and decode of its latents, each alone (median seconds)."""
    pipe = manager.pipes[case["checkpoint"]]
    device = pipe._execution_device
    pixels = pixels_of(image, device)
    with torch.no_grad():
        encode_runs, latents = timed(lambda: encode_image(pipe, pixels), repeats + 1)
        unpacked = pipe._unpack_latents(latents, case["height"], case["width"]).to(pipe.vae.dtype)
        decode_runs, _ = timed(lambda: pipe.vae.decode(unpacked, return_dict=False)[0], repeats + 1)
    return {"encode_s": statistics.median(encode_runs[1:]), "decode_s": statistics.median(decode_runs[1:])}


def benchmark(case_names: list[str], strength: float, mode: str, repeats: int, smoke: bool) -> dict:
    turbo, raw_transformer = build_smoke() if smoke else build_full_size("cuda" if CUDA else "cpu")
    pipes = stock_pipelines(turbo, raw_transformer)
    results: dict = {}
    seed = 7
    stock_images: dict[str, np.ndarray] = {}
    stock_latents: dict[str, torch.Tensor] = {}
    for name in case_names:  # 1. stock first, while every module is as diffusers made it
        case = smoke_case(CASES[name]) if smoke else CASES[name]
        image = init_image(case["width"], case["height"])
        pipe = pipes[case["checkpoint"]]
        run_stock(pipe, case, image, strength, seed)  # warm-up
        reset_peak()
        runs, (stock_images[name], stock_latents[name]) = timed(
            lambda p=pipe, c=case, i=image: run_stock(p, c, i, strength, seed), repeats
        )
        results[name] = {
            **case, "strength": strength, "steps_run": len(schedule_tail(case["steps"], strength)),
            "stock_s": statistics.median(runs), "stock_runs_s": runs, "stock_peak_gb": peak_gb(),
        }  # fmt: skip

    # 2. Ours: the manager over the same modules, with the mode's fast path, warmed up as the app warms up.
    mode = "padfree" if smoke else mode
    options = mode_options(mode)
    manager = ModelManager(InMemoryLoader(turbo, raw_transformer), placement="gpu", options=options)
    manager.start(background=False)
    sizes = tuple(
        {(c["width"], c["height"]) for c in (smoke_case(CASES[n]) if smoke else CASES[n] for n in case_names)}
    )
    results_warmup = manager.warm_up(sizes=sizes, batch_sizes=(1,)) if options.compile else 0.0
    for name in case_names:
        case = smoke_case(CASES[name]) if smoke else CASES[name]
        image = init_image(case["width"], case["height"])
        run_ours(manager, case, image, strength, seed)  # warm-up: this shape's graphs
        reset_peak()
        runs, result = timed(lambda c=case, i=image: run_ours(manager, c, i, strength, seed), repeats)
        ours = np.asarray(result.images[0], dtype=np.float32) / 255
        # Where a pixel difference starts: the init image's latents through our encoder against the stock one's.
        with torch.no_grad():
            latents = encode_image(manager.pipes[case["checkpoint"]], pixels_of(image, stock_latents[name].device))
        row = results[name]
        row.update({
            f"{mode}_s": statistics.median(runs), f"{mode}_runs_s": runs, f"{mode}_peak_gb": peak_gb(),
            f"{mode}_speedup": row["stock_s"] / statistics.median(runs),
            f"{mode}_phases_ms": result.timings.as_ms(),
            f"{mode}_vs_stock_max_abs_pixel": float(np.abs(ours - stock_images[name]).max()),
            f"{mode}_vs_stock_mean_abs_pixel": float(np.abs(ours - stock_images[name]).mean()),
            f"{mode}_vs_stock_image_latents_max_abs": float((latents - stock_latents[name]).abs().max()),
            "stock_image_latents_abs_max": float(stock_latents[name].abs().max()),
            **{f"vae_{k}": v for k, v in vae_times(manager, case, image, repeats).items()},
        })  # fmt: skip
        sync()
    return {"cases": results, "mode_options": str(options), "compile_warmup_s": results_warmup}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="turbo1024")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--mode", choices=("padfree", "exact", "fast"), default="fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = True
    env = environment()
    payload = {"environment": env, "repeats": args.repeats,
               **benchmark(args.cases.split(","), args.strength, args.mode, args.repeats, args.smoke)}  # fmt: skip
    mode = "padfree" if args.smoke else args.mode  # what the run measured
    write_result(args.out, payload, f"img2img-{args.cases.replace(',', '-')}_{mode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
