"""How the demo model's pictures depend on their size, read back from pixels: 48 held-out single-shape prompts (a
fixed sample, seed = the prompt's index) on Turbo at each side, each picture resized to the scorer's 256² first. The
demo app opens at the side that scores best (`krea2/demo.DEMO_SIDES`), and its banner says what happens at the other.

    python -m demo.size_effect --out demo/results/size-effect-<date>-cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from demo.evaluate import SIZE, load_manager
from demo.scenes import held_out
from demo.score import tally
from krea2.checkpoints import TURBO
from krea2.demo import DEMO_SIDES
from krea2.manager import ModelManager
from krea2.request import GenerationRequest

PROMPTS, SAMPLE_SEED = 48, 7


def measure(manager: ModelManager, sides: tuple[int, ...] = DEMO_SIDES, prompts: int = PROMPTS) -> dict:
    singles = [c for c in held_out() if c.layout == "single"]
    chosen = random.Random(SAMPLE_SEED).sample(singles, prompts)
    results: dict = {"checkpoint": TURBO.key, "prompts": prompts, "sample_seed": SAMPLE_SEED, "sides": {}}
    for side in sides:
        pictures = []
        for seed, composition in enumerate(chosen):
            request = GenerationRequest(prompt=composition.prompt, checkpoint=TURBO.key, width=side, height=side,
                                        seed=seed)  # fmt: skip
            image = manager.generate(request).images[0]
            pictures.append(np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32))
        results["sides"][str(side)] = tally(pictures, chosen)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = measure(load_manager(None, "cpu"))
    results["command"] = f"python -m demo.size_effect --out {args.out}"
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(results["sides"])


if __name__ == "__main__":
    main()
