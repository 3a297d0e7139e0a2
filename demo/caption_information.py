"""At which noise levels a caption's words matter to Raw: where training can learn them.

For ground-truth pictures of single-shape prompts, Raw's flow-matching loss at a grid of noise levels with the right
caption, and with the caption's shape kind or colour swapped for another (the same pictures and noise). What a word
adds at a noise level (`loss(swapped) - loss(right)`) is how much a model that has learnt the word gains from it
there; weighted by how often training draws that noise level, it says where the word's training signal comes from.
Session n (bench/NOTES.md) found a from-scratch Raw binding colours within ~1,000 steps while drawing the asked kind
at chance after 3,000: this measures whether the noise levels training draws are where the kind is decided.

    python -m demo.caption_information --out demo/results/caption-information-<date>-cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from demo.evaluate import load_manager
from demo.scenes import COLOURS, KINDS, Composition, held_out
from demo.train import Tokens, bf16, ground_truth, raw_mu, training_sigmas, velocity

SIGMAS = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)


def swapped(composition: Composition, field: str, rng: random.Random) -> Composition:
    """`composition` with its shape's kind or colour replaced by another one a training caption could have."""
    if field == "kind":
        return replace(composition, kind=rng.choice([k for k in KINDS if k != composition.kind]))
    choices = [c for c in COLOURS if c not in (composition.colour, composition.background)]
    return replace(composition, colour=rng.choice(choices))


def training_density(image_tokens: int, bins: tuple[float, ...] = SIGMAS, draws: int = 1_000_000) -> list[float]:
    """The share of Raw's training noise levels (`demo.train.training_sigmas`) at pictures of `image_tokens` nearest
    each of `bins`."""
    sigma = training_sigmas(image_tokens, draws, generator=torch.Generator().manual_seed(0))
    edges = torch.tensor([(a + b) / 2 for a, b in itertools.pairwise(bins)])
    counts = torch.bincount(torch.bucketize(sigma, edges), minlength=len(bins)).float()
    return (counts / counts.sum()).tolist()


@torch.no_grad()
def measure(
    pipe, compositions: list[Composition], sigmas: tuple[float, ...] = SIGMAS, size: int = 256, seed: int = 3
) -> dict[str, object]:
    device = pipe._execution_device
    rng = random.Random(seed)  # the pictures' places and sizes, then the swapped words
    x0, noise, _ = ground_truth(pipe, compositions, size, seed, rng, chunk=32)
    captions = {
        "right": [c.prompt for c in compositions],
        **{f"{field} swapped": [swapped(c, field, rng).prompt for c in compositions] for field in ("kind", "colour")},
    }
    tokens = Tokens(pipe, device)
    embedded = {name: tokens.hidden_states(*tokens(these)) for name, these in captions.items()}
    losses: dict[str, list[float]] = {name: [] for name in captions}
    for level in sigmas:
        sigma = torch.full((len(x0),), level, device=device)
        noisy = (1 - level) * x0 + level * noise
        for name, (embeds, mask) in embedded.items():
            total = 0.0
            for part in range(0, len(x0), 32):
                these = slice(part, part + 32)
                with bf16(device):
                    predicted = velocity(pipe.transformer, noisy[these], embeds[these], mask[these], sigma[these], size)
                total += F.mse_loss(predicted.float(), (noise - x0)[these], reduction="sum").item()
            losses[name].append(total / x0.numel())
    density = training_density(x0.shape[1], sigmas)
    gains = {
        field: [s - r for s, r in zip(losses[f"{field} swapped"], losses["right"], strict=True)]
        for field in ("kind", "colour")
    }
    signal = {field: sum(g * d for g, d in zip(gain, density, strict=True)) for field, gain in gains.items()}
    return {
        "sigmas": list(sigmas),
        "loss": {name: [round(v, 6) for v in values] for name, values in losses.items()},
        "gain": {field: [round(v, 6) for v in gain] for field, gain in gains.items()},
        "training_density": [round(v, 4) for v in density],
        "training_signal": {field: round(v, 6) for field, v in signal.items()},
        "pictures": len(compositions),
        "mu": round(raw_mu(x0.shape[1]), 4),
        "shift": round(math.exp(raw_mu(x0.shape[1])), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=None, help="exported demo checkpoints (default: shipped)")
    parser.add_argument("--pictures", type=int, default=96, help="held-out single-shape prompts measured")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    singles = [c for c in held_out() if c.layout == "single"]
    chosen = random.Random(11).sample(singles, min(args.pictures, len(singles)))
    manager = load_manager(args.checkpoints, "cpu")
    result = measure(manager.pipes["raw"], chosen)
    args.out.write_text(json.dumps({"colours": len(COLOURS), "kinds": len(KINDS), **result}, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
