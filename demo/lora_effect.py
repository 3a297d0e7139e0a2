"""What the demo style LoRA does to pictures, in pixels: `grid_edge_share` (demo/score.py) of demo Raw and Turbo
pictures without it and at several weights, through the app's own LoRA library and manager (demo mode).

    python -m demo.lora_effect --out demo/results/lora-effect-<date>-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from demo.score import grid_edge_share
from krea2.checkpoints import RAW, TURBO
from krea2.demo import demo_checkpoints
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.request import GenerationRequest
from studio.runtime import DEMO_LORAS, lora_library
from studio.settings import Settings

PROMPTS = (
    "a red circle on a blue background",
    "a yellow star on a green background",
    "a purple square on a white background",
    "a blue triangle on an orange background",
)
WEIGHTS = (0.0, 0.5, 0.8, 1.0, 1.5)
STEPS = {RAW.key: 20, TURBO.key: TURBO.default_steps}


def demo_manager(data_dir: Path) -> ModelManager:
    """The demo app's manager, its LoRA library as `python app.py` builds it without a GPU (the demo LoRAs listed)."""
    manager = ModelManager(PipelineLoader(demo_checkpoints(), torch.float32), demo=True,
                           loras=lora_library(Settings(demo=True), data_dir))  # fmt: skip
    manager.start(background=False)
    return manager


def edge_shares(manager: ModelManager, checkpoint: str, loras: list[str], side: int = 256,
                prompts: tuple[str, ...] = PROMPTS) -> list[float]:  # fmt: skip
    """`grid_edge_share` of one picture per prompt (seed = its index) with these LoRAs."""
    shares = []
    for seed, prompt in enumerate(prompts):
        request = GenerationRequest(prompt=prompt, checkpoint=checkpoint, width=side, height=side,
                                    steps=STEPS[checkpoint], seed=seed, loras=loras)  # fmt: skip
        shares.append(round(grid_edge_share(manager.generate(request).images[0]), 4))
    return shares


def measure(lora: str, side: int) -> dict:
    with tempfile.TemporaryDirectory() as data:
        manager = demo_manager(Path(data))
        library = manager.loras
        results: dict = {"lora": lora, "hash": library.short_hash(library.get(lora)), "side": side, "steps": STEPS,
                         "prompts": PROMPTS, "seeds": list(range(len(PROMPTS))), "checkpoints": {}}  # fmt: skip
        for checkpoint in (RAW.key, TURBO.key):
            rows = {}
            for weight in WEIGHTS:
                shares = edge_shares(manager, checkpoint, [f"{lora}:{weight}"] if weight else [], side)
                rows[str(weight)] = {"grid_edge_share": shares, "median": statistics.median(shares)}
            results["checkpoints"][checkpoint] = rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lora", default=f"{DEMO_LORAS}/pixel-style")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = measure(args.lora, args.side)
    results["command"] = "python -m demo.lora_effect --out " + str(args.out)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for checkpoint, rows in results["checkpoints"].items():
        print(checkpoint, {weight: row["median"] for weight, row in rows.items()})


if __name__ == "__main__":
    main()
