"""What Compare shows between the demo Raw and Turbo, in pixels: how much each checkpoint's pictures vary from seed to
seed (Raw diverse), how clean they come out (Turbo at 8 steps against Raw cut to 8), and how far Raw's guidance scale
moves its pictures. Held-out single-shape prompts (a fixed sample), a few seeds each, 256², through demo.evaluate's
drawing and demo/score.py's reading.

    python -m demo.compare_effect --out demo/results/compare-effect-<date>-cpu.json

For each setting: `correct` (the scorer's verdict), `off_palette` (the share of pixels more than 40 (RGB distance)
from every colour the generator draws: smears, halos and blur between two colours), and over the seeds of one
prompt, `position_spread` (the standard deviation of the largest shape's centre, pixels), `size_spread` (of the log of
its area) and `seed_difference` (the mean absolute pixel difference between two seeds' pictures, 0-255), medians over
the prompts. `same_seed_difference` is how far each setting's picture lies from Raw's default one of the same prompt
and seed: what the two halves of Compare differ by.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
from pathlib import Path

import torch

from demo.evaluate import draw, load_manager
from demo.scenes import COLOURS, held_out
from demo.score import judge, read_all

PROMPTS, SEEDS, SAMPLE_SEED = 8, 6, 11
OFF_PALETTE = 40.0  # RGB distance from the nearest palette colour
REFERENCE = "raw_52_g3.5"  # what Compare's Raw half draws by default


def off_palette_share(pictures: torch.Tensor) -> float:
    """The share of pixels (of (n, 3, H, W) pictures in [0, 1]) farther than OFF_PALETTE from every palette colour."""
    rgb = pictures.permute(0, 2, 3, 1).reshape(-1, 3) * 255
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    return float((torch.cdist(rgb, palette).amin(1) > OFF_PALETTE).float().mean())


def spreads(readings) -> tuple[float, float] | None:
    """The largest shape's centre spread (pixels at 256²) and log-area spread over one prompt's seeds."""
    largest = [r.shapes[0] for r in readings if r.shapes]
    if len(largest) < 2:
        return None
    centre = statistics.pstdev([s.x for s in largest]) + statistics.pstdev([s.y for s in largest])
    size = statistics.pstdev([torch.tensor(float(s.area)).log().item() for s in largest])
    return round(centre / 2 * 256, 1), round(size, 3)


def measure(manager, settings: tuple[str, ...], prompts: int = PROMPTS, seeds: int = SEEDS) -> dict:
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
            "position_spread": statistics.median(s[0] for s in found),
            "size_spread": statistics.median(s[1] for s in found),
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
    results["command"] = "python -m demo.compare_effect --out " + str(args.out)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, row in results["settings"].items():
        print(name, row)


if __name__ == "__main__":
    main()
