"""GPU smoke check of the app's own fast path at full size (random weights): the options `runtime.build_manager`
chooses on this machine, FA4's start-up probe, then 1- and 2-image Turbo and Raw requests (8 steps, and its default
52) through `ModelManager`, and the 1-image Turbo request again with step previews, as the UI asks for them.

    python bench/gpu_smoke.py --out bench/results [--compile]

Without --compile it skips the (minutes-long) compile warm-up and checks the eager fast path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import PROMPT, InMemoryLoader, build_full_size, environment, result_path
from krea2.manager import ModelManager
from krea2.request import GenerationRequest
from krea2.speedups import installed
from krea2.speedups.attention import flash4_unavailable_reason
from studio.runtime import fast_path_options
from studio.settings import Settings

log = logging.getLogger("smoke")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = environment()
    t0 = time.perf_counter()
    reason = flash4_unavailable_reason()
    result: dict = {"environment": env, "flash4_probe_s": time.perf_counter() - t0, "flash4_unavailable": reason}
    options = fast_path_options(Settings(compile=args.compile), cuda=True, demo=False)  # as the app chooses
    result["options"] = options.__dict__
    log.info("%s", result)
    turbo, raw = build_full_size("cuda")
    manager = ModelManager(InMemoryLoader(turbo, raw), placement="gpu", options=options)
    manager.start(background=False)
    while manager.status().warmup == "running" or (args.compile and manager.status().warmup == "off"):
        time.sleep(2)
    result["status"] = manager.status().summary()
    processor = type(manager.pipes["turbo"].transformer.transformer_blocks[0].attn.processor).__name__
    result["block_attention_processor"] = processor
    result["installed"] = {key: installed(pipe) for key, pipe in manager.pipes.items()}
    previews: list[int] = []

    def collect(step: int, _total: int, _preview) -> None:  # what the UI's callback costs, near enough: a queue put
        previews.append(step)

    turbo_1 = GenerationRequest(prompt=PROMPT, seed=1)
    runs = [  # (name, request, step callback)
        ("turbo_1", turbo_1, None),
        ("turbo_1_previews", turbo_1, collect),
        ("turbo_2_images", GenerationRequest(prompt=PROMPT, seed=1, num_images=2), None),
        ("raw_8_steps", GenerationRequest(prompt=PROMPT, checkpoint="raw", negative_prompt="blurry", steps=8, seed=1),
         None),
        ("raw_default_steps", GenerationRequest(prompt=PROMPT, checkpoint="raw", negative_prompt="blurry", seed=1),
         None),
    ]  # fmt: skip
    for name, request, on_step in runs:
        attempts = ("first", "second") if request.steps > 8 else ("first", "second", "third")
        for attempt in attempts:
            previews.clear()
            start = time.perf_counter()
            out = manager.generate(request, on_step)
            torch.cuda.synchronize()
            result[f"{name}_{attempt}_s"] = time.perf_counter() - start
            result[f"{name}_images"] = len(out.images)
        if on_step is not None:
            result[f"{name}_preview_steps"] = list(previews)
        log.info("%s: %s s", name, ", ".join(f"{result[f'{name}_{attempt}_s']:.3f}" for attempt in attempts))
    path = result_path(args.out, env, "gpu-smoke")
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
