"""What Compare shows between the demo Raw and Turbo, in pixels: how much each checkpoint's pictures vary from seed to
seed, how often they are right (Turbo at its 8 steps against Raw cut to 8) and how far Raw's guidance scale moves its
pictures. Held-out single-shape prompts (a fixed sample), a few seeds each, 256², through demo.evaluate's drawing and
demo/score.py's reading.

    python -m demo.compare_effect --out demo/results/compare-effect-<date>-cpu.json

For each setting: `correct` (the share the scorer reads as right), `off_palette` (the share of pixels more than 40
(RGB distance) from every colour the generator draws: smears, halos and blends of two colours), `position_spread`
(the mean of the standard deviations of the largest shape's centre, x and y, over one prompt's seeds, pixels) and
`size_spread` (the same of the log of its area), medians over the prompts; `seed_difference` (the mean absolute
pixel difference between two seeds' pictures of one prompt, 0-255, the median over all such pairs). And
`same_seed_difference`: how far each setting's picture lies from Raw's default one of the same prompt and seed, on
average per pixel: what the two halves of Compare differ by.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
from pathlib import Path

import torch

from demo.evaluate import draw, load_manager
from demo.scenes import COLOURS, held_out
from demo.score import Reading, judge, read_all
from krea2.manager import ModelManager

PROMPTS, SEEDS, SAMPLE_SEED = 8, 6, 11
OFF_PALETTE = 40.0  # RGB distance from the nearest palette colour
REFERENCE = "raw_52_g3.5"  # what Compare's Raw half draws by default


def off_palette_share(pictures: torch.Tensor) -> float:
    """The share of pixels (of (n, 3, H, W) pictures in [0, 1]) farther than OFF_PALETTE from every palette colour."""
    rgb = pictures.permute(0, 2, 3, 1).reshape(-1, 3) * 255
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    return float((torch.cdist(rgb, palette).amin(1) > OFF_PALETTE).float().mean())


def spreads(readings: list[Reading]) -> tuple[float, float] | None:
    """The largest shape's centre spread (pixels at 256²) and log-area spread over one prompt's seeds; None when
    fewer than two of its pictures show a shape."""
    largest = [r.shapes[0] for r in readings if r.shapes]
    if len(largest) < 2:
        return None
    centre = (statistics.pstdev([s.x for s in largest]) + statistics.pstdev([s.y for s in largest])) / 2
    return round(centre * 256, 1), round(statistics.pstdev([math.log(s.area) for s in largest]), 3)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def measure(manager: ModelManager, settings: tuple[str, ...], prompts: int = PROMPTS, seeds: int = SEEDS) -> dict:
    singles = [c for c in held_out() if c.layout == "single"]
    chosen = random.Random(SAMPLE_SEED).sample(singles, prompts)
    compositions = [c for c in chosen for _ in range(seeds)]
    seed_list = [s for _ in chosen for s in range(seeds)]
    pictures = {name: draw(manager, name, [c.prompt for c in compositions], seed_list) for name in settings}
    results: dict = {"prompts": [c.prompt for c in chosen], "seeds": seeds, "settings": {}}
    for name, drawn in pictures.items():
        readings = read_all(list(drawn))
        per_prompt = [readings[i * seeds : (i + 1) * seeds] for i in range(prompts)]
        found = [s for s in (spreads(r) for r in per_prompt) if s is not None]
        differences = [
            float((drawn[i * seeds + a] - drawn[i * seeds + b]).abs().mean() * 255)
            for i in range(prompts)
            for a, b in itertools.combinations(range(seeds), 2)
        ]
        verdicts = [judge(r, c)["correct"] for r, c in zip(readings, compositions, strict=True)]
        results["settings"][name] = {
            "correct": round(statistics.mean(verdicts), 3),
            "off_palette": round(off_palette_share(drawn), 4),
            "position_spread": _median([s[0] for s in found]),
            "size_spread": _median([s[1] for s in found]),
            "seed_difference": round(statistics.median(differences), 1),
            "same_seed_difference": round(float((drawn - pictures[REFERENCE]).abs().mean() * 255), 1)
            if REFERENCE in pictures
            else None,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=None, help="folder with the two demo checkpoints")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = (REFERENCE, "turbo_8", "raw_8_g3.5", "raw_52_g1.5", "raw_52_g0")
    results = measure(load_manager(args.checkpoints, args.device), settings)
    results["command"] = f"python -m demo.compare_effect --device {args.device} --out {args.out}" + (
        f" --checkpoints {args.checkpoints}" if args.checkpoints else ""
    )
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, row in results["settings"].items():
        print(name, row)


if __name__ == "__main__":
    main()
