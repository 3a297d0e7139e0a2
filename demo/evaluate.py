"""Measure what the demo checkpoints draw: held-out prompts, read back from the pixels by `demo/score.py`.

    python -m demo.evaluate --checkpoints demo/checkpoints --out demo/results/eval.json

The checkpoints load through the app's own loader and manager (`krea2.loading`, `krea2.manager`), and each picture is
made as the app makes it for that prompt and seed (CPU noise, the checkpoint's schedule), only in batches. Every
held-out composition (`demo.scenes.held_out`: 200 single shapes, 30 counts, 30 relations that training never showed)
is drawn with `--seeds` seeds under each setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from demo.scenes import Composition, held_out
from demo.score import judge, read_all
from krea2.demo import demo_checkpoints
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager

log = logging.getLogger("demo.evaluate")

SIZE = 256
# name -> (checkpoint, steps, guidance). Raw's defaults, Raw cut to Turbo's 8 steps, Turbo's defaults, and Raw's
# guidance scale varied (0 turns classifier-free guidance off).
SETTINGS = {
    "raw_52_g3.5": ("raw", 52, 3.5),
    "raw_8_g3.5": ("raw", 8, 3.5),
    "turbo_8": ("turbo", 8, 0.0),
    "raw_52_g0": ("raw", 52, 0.0),
    "raw_52_g1.5": ("raw", 52, 1.5),
}


def load_manager(checkpoints: Path | None, device: str) -> ModelManager:
    manager = ModelManager(PipelineLoader(demo_checkpoints(checkpoints), torch.float32), device=device, demo=True)
    manager.start(background=False)
    return manager


@torch.no_grad()
def draw(manager: ModelManager, setting: str, prompts: list[str], seeds: list[int], batch: int = 130) -> torch.Tensor:
    """(n, 3, SIZE, SIZE) pictures in [0, 1], one per (prompt, seed)."""
    key, steps, guidance = SETTINGS[setting]
    pipe = manager.pipes[key]
    out = []
    for start in range(0, len(prompts), batch):
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + batch]]
        images = pipe(
            prompt=prompts[start : start + batch],
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="pt",
            max_sequence_length=64,
        ).images
        out.append(images.float().cpu())
    return torch.cat(out)


def score(compositions: list[Composition], pictures: torch.Tensor) -> dict:
    verdicts = [judge(r, c) for r, c in zip(read_all(list(pictures)), compositions, strict=True)]
    result: dict = {"images": len(verdicts), "accuracy": _mean(v["correct"] for v in verdicts)}
    for layout in ("single", "count", "relation"):
        chosen = [v for v, c in zip(verdicts, compositions, strict=True) if c.layout == layout]
        if chosen:
            parts = {key: _mean(v[key] for v in chosen) for key in chosen[0]}
            result[layout] = {"images": len(chosen), **parts}
    return result


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / max(len(values), 1), 4)


def grid(pictures: torch.Tensor, columns: int = 8) -> Image.Image:
    rows = (len(pictures) + columns - 1) // columns
    canvas = torch.ones(3, rows * SIZE, columns * SIZE)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        canvas[:, r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE] = picture
    return Image.fromarray((canvas.permute(1, 2, 0) * 255).round().byte().numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=None, help="folder with the two demo checkpoints")
    parser.add_argument("--out", type=Path, default=Path("demo/results/eval.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument(
        "--grids", type=Path, default=None, help="folder for a PNG of the first 32 pictures per setting"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manager = load_manager(args.checkpoints, args.device)
    compositions = held_out()
    cases = [(c, 1000 * s + i) for s in range(args.seeds) for i, c in enumerate(compositions)]
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "size": SIZE,
        "compositions": len(compositions),
        "seeds": args.seeds,
        "settings": {},
    }
    for setting in args.settings:
        start = time.perf_counter()
        pictures = draw(manager, setting, [c.prompt for c, _ in cases], [seed for _, seed in cases])
        drawn = time.perf_counter() - start
        report["settings"][setting] = {"draw_seconds": round(drawn, 1), **score([c for c, _ in cases], pictures)}
        log.info("%s: %s", setting, report["settings"][setting])
        if args.grids:
            args.grids.mkdir(parents=True, exist_ok=True)
            grid(pictures[:32]).save(args.grids / f"{setting}.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
