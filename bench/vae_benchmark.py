"""The VAE alone at full size: the init image's encode (img2img) against the decode, stock and ours, side by side in
one process (issue 17: "the VAE encoder runs at least as fast as the decoder's single-frame path").

Full-size `AutoencoderKLQwenImage` (the class defaults are the real config) with random weights in bf16, one
one-frame (1, 3, 1, side, side) picture. Stock: `vae.encode(...).latent_dist.mode()` and `vae.decode(...)` as
diffusers runs them. Ours: the same calls after `use_single_frame_encode` / `use_single_frame_decode` (compiled on a
GPU, as the fast path applies them), so `FrameEncoder` and `FrameDecoder` do the work. Medians of `--repeats` after
warm-up, and the largest difference of ours from stock.

    python bench/vae_benchmark.py --out bench/results
    python bench/vae_benchmark.py --smoke --out /tmp/smoke   # demo VAE, CPU (tests/test_vae_benchmark_smoke.py)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import CUDA, environment, timed, write_result
from krea2.speedups.vae_decode import (
    single_frame_decode_of,
    single_frame_encode_of,
    use_single_frame_decode,
    use_single_frame_encode,
)

log = logging.getLogger("bench.vae")


def build(smoke: bool) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage

    from krea2.demo import build_vae

    if smoke:
        return build_vae().eval()
    torch.manual_seed(0)
    return AutoencoderKLQwenImage().to("cuda", torch.bfloat16).eval()


def measure(vae: torch.nn.Module, pixels: torch.Tensor, repeats: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Median seconds of an encode and a decode (after two warm-up calls each), and their outputs."""
    with torch.no_grad():
        encode_runs, latents = timed(lambda: vae.encode(pixels).latent_dist.mode(), repeats + 2)
        decode_runs, decoded = timed(lambda: vae.decode(latents, return_dict=False)[0], repeats + 2)
    times = {"encode_s": statistics.median(encode_runs[2:]), "decode_s": statistics.median(decode_runs[2:]),
             "encode_runs_s": encode_runs[2:], "decode_runs_s": decode_runs[2:]}  # fmt: skip
    return times, latents, decoded


def benchmark(smoke: bool, side: int, repeats: int) -> dict:
    vae = build(smoke)
    dtype = next(vae.parameters()).dtype
    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(1, 3, 1, side, side, generator=generator) * 2 - 1).to(vae.device, dtype)
    stock, stock_latents, stock_decoded = measure(vae, pixels, repeats)
    use_single_frame_decode(vae, compiled=CUDA)
    use_single_frame_encode(vae, compiled=CUDA)
    paths = {"decode": single_frame_decode_of(vae), "encode": single_frame_encode_of(vae)}
    ours, latents, decoded = measure(vae, pixels, repeats)
    result = {
        "side": side, "dtype": str(dtype), "paths": paths, "stock": stock, "ours": ours,
        "encode_speedup": stock["encode_s"] / ours["encode_s"], "decode_speedup": stock["decode_s"] / ours["decode_s"],
        "ours_encode_vs_decode": ours["encode_s"] / ours["decode_s"],
        "ours_vs_stock_max_abs": {"latents": float((latents - stock_latents).abs().max()),
                                  "decoded": float((decoded - stock_decoded).abs().max())},
    }  # fmt: skip
    result["encoder_at_least_as_fast_as_decoder"] = result["ours_encode_vs_decode"] <= 1.0 if CUDA else None
    log.info("VAE %d²: %s", side, {k: v for k, v in result.items() if k not in ("stock", "ours")})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--smoke", action="store_true", help="the demo VAE on the CPU: checks the script, not the speed"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not CUDA and not args.smoke:
        parser.error("needs a CUDA GPU (or --smoke)")
    side = 64 if args.smoke else args.side
    payload = {"environment": environment(), **benchmark(args.smoke, side, args.repeats)}
    write_result(args.out, payload, f"vae{side}" + ("-smoke" if args.smoke else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
