"""A CPU proxy for `demo.train --vae-recolour`: the committed demo VAE fine-tuned briefly with and without recoloured
pictures, side by side from the same weights and seeds, and the flat-colour round trip measured before and after
(`demo.train.colour_round_trip`: the worst channel error over the generator's ten colours, and over 64 colours it never
draws). It shows whether the VAE can take other colours without losing its own; how a VAE trained from scratch with the
flag fares is for the device (bench/NOTES.md, issue 15, session r).

    python bench/vae_recolour_proxy.py --steps 60 --out bench/results/<name>.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from demo.train import colour_round_trip, recolour, scene_pixels, vae_loss
from krea2.demo import default_checkpoints_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from diffusers import AutoencoderKLQwenImage

    torch.set_num_threads(2)
    folder = default_checkpoints_dir() / "Krea-2-Turbo-demo"
    result = {"steps": args.steps, "batch": args.batch, "size": args.size, "share": args.share, "arms": {}}
    for share in (0.0, args.share):
        vae = AutoencoderKLQwenImage.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
        before = colour_round_trip(vae.eval(), torch.device("cpu"))
        vae.train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-4, betas=(0.9, 0.99))
        rng, colours = random.Random(10), torch.Generator().manual_seed(11)
        started, losses = time.perf_counter(), []
        for step in range(args.steps):
            pixels = recolour(scene_pixels(rng, args.batch, args.size, "cpu", seed=step), share, colours)
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(vae_loss(vae, pixels)))
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
        after = colour_round_trip(vae.eval(), torch.device("cpu"))
        result["arms"][str(share)] = {
            "before": before,
            "after": after,
            "seconds": round(time.perf_counter() - started),
            "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
        }
        print(share, result["arms"][str(share)], flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
