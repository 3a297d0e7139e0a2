"""How fast the demo checkpoints draw on the CPU, through the app's own manager, and how soon `app.py` is ready.

    python bench/demo_speed.py [--repeats 5] [--skip-app]
    python bench/demo_speed.py --skip-app --transformer 256x6   # the same with random transformers of another shape

Each case runs once to warm up, then `--repeats` times; medians are reported, side by side in one run. The app start
is timed from process launch to the manager's "Checkpoints ready" line with the page answering (as tests/app_server
waits for it). Results go to bench/results/<date>_<machine>_demo-cpu.json.

`--transformer WIDTHxBLOCKS` swaps both checkpoints' transformers for random ones of that shape (a copy of the demo
checkpoints in a temporary folder, loaded the same way): the CPU cost of a demo model of that size before training
it (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.train import transformer_shape  # noqa: E402
from krea2.demo import demo_checkpoints  # noqa: E402
from krea2.loading import PipelineLoader  # noqa: E402
from krea2.manager import ModelManager  # noqa: E402
from krea2.request import GenerationRequest  # noqa: E402

CASES = {  # name -> request fields; the targets are in the README's demo section
    "turbo_256": {"checkpoint": "turbo", "width": 256, "height": 256},
    "turbo_512": {"checkpoint": "turbo", "width": 512, "height": 512},
    "raw_256_52steps": {"checkpoint": "raw", "width": 256, "height": 256},
}


def reshaped_checkpoints(folder: Path, width: int, layers: int) -> Path:
    """A copy of the demo checkpoints in `folder` whose two transformers are random, `width` x `layers` blocks."""
    import shutil

    from krea2.demo import RAW_FOLDER, TURBO_FOLDER, build_transformer, default_checkpoints_dir

    shutil.copytree(default_checkpoints_dir(), folder, dirs_exist_ok=True)
    for seed, name in enumerate((TURBO_FOLDER, RAW_FOLDER)):
        shutil.rmtree(folder / name / "transformer")
        build_transformer(seed, width, layers).to(torch.bfloat16).save_pretrained(folder / name / "transformer")
    return folder


def time_cases(repeats: int, checkpoints: Path | None = None) -> dict:
    start = time.perf_counter()
    manager = ModelManager(PipelineLoader(demo_checkpoints(checkpoints), torch.float32), device="cpu", demo=True)
    manager.start(background=False)
    results = {"load_seconds": round(time.perf_counter() - start, 2)}
    for name, fields in CASES.items():
        request = GenerationRequest(prompt="a red circle on a blue background", seed=1, **fields)
        manager.generate(request)  # warm-up
        seconds = []
        for _ in range(repeats):
            seconds.append(manager.generate(request).timings.total_s)
        results[name] = {"median_s": round(statistics.median(seconds), 3), "runs_s": [round(s, 3) for s in seconds]}
        print(name, results[name], flush=True)
    return results


def time_app_start() -> float:
    sys.path.insert(0, str(ROOT / "tests"))
    from app_server import AppServer

    with tempfile.TemporaryDirectory() as tmp:
        server = AppServer(Path(tmp) / "data", ROOT / "demo" / "checkpoints")
        start = time.perf_counter()
        server.start(timeout=120)
        seconds = time.perf_counter() - start
        server.stop()
    return round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--transformer", help="random transformers of this shape, WIDTHxBLOCKS (e.g. 256x6)")
    args = parser.parse_args()
    shape = transformer_shape(args.transformer) if args.transformer else None  # demo.train's flag, its usage message
    torch.set_num_threads(os.cpu_count() or 1)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": "python bench/demo_speed.py " + " ".join(sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report |= time_cases(args.repeats, reshaped_checkpoints(Path(tmp), *shape) if shape else None)
    if shape:
        report["transformer"] = {"width": shape[0], "layers": shape[1], "weights": "random"}
    if not args.skip_app:
        report["app_ready_s"] = time_app_start()
        print("app ready", report["app_ready_s"], flush=True)
    suffix = f"_{args.transformer}-random" if shape else ""
    out = ROOT / "bench" / "results" / f"{date.today()}_cpu{os.cpu_count()}_demo-cpu{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
