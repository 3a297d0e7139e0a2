"""Seconds to the first image and to full speed, on the app's own start-up path.

What `python app.py` does before serving, minus the web server: the settings, the compile caches in the data folder
(`studio.runtime.use_compile_cache`, torch's artifacts file), the model manager loading in the background, then the
background compile warm-up. The script asks for a Turbo image the moment the weights are loaded, keeps asking every
`--interval` seconds while the warm-up runs (as a person using the app would), and times images once the warm-up is
done. Issue 19's targets: first image <= 10 s after the weights are loaded; full speed <= 120 s on a cold cache,
<= 30 s warm.

    python bench/startup_time.py --random-weights --data-dir /tmp/krea2-start --cold --out bench/results  # fresh
    python bench/startup_time.py --random-weights --data-dir /tmp/krea2-start --out bench/results         # restart

`--random-weights` builds full-size Krea 2 with random weights on the GPU (these machines cannot download the gated
checkpoints), so "weights loaded" is the build, not a disk read; without it the app's own settings (KREA2_TURBO, ...)
say what loads. `--cold` empties the data folder's compile caches first.

    python bench/startup_time.py --smoke --data-dir /tmp/start --out /tmp/smoke

runs it on the CPU with the demo checkpoints (tests/test_startup_time.py does); its numbers mean nothing.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports, as `python app.py` starts

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("startup")


def since_start() -> float:
    return time.perf_counter() - PROCESS_START


def build(args: argparse.Namespace, data_dir: Path):
    """The manager as the app builds it (`app.build_app`), or over full-size random weights with the app's options."""
    import torch

    from studio.runtime import build_manager, compile_cache_dir, fast_path_options, use_compile_cache
    from studio.settings import load_settings

    settings = load_settings({"KREA2_DEMO": "1"} if args.smoke else None)
    use_compile_cache(settings, data_dir)
    if not args.random_weights:
        return build_manager(settings, compile_cache_folder=compile_cache_dir(data_dir))
    from bench.benchmark import InMemoryLoader, build_full_size
    from krea2.compile_cache import CompileCache
    from krea2.manager import ModelManager

    options = fast_path_options(settings, cuda=True, demo=False)  # the environment's settings (KREA2_KERNEL_TUNING...)
    cache = CompileCache(compile_cache_dir(data_dir), device=torch.cuda.get_device_name()) if options.compile else None
    turbo, raw = build_full_size("cuda")
    return ModelManager(
        InMemoryLoader(turbo, raw), placement=settings.placement, options=options, compile_cache=cache,
        background_compile=settings.background_compile,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the app's data folder (its compile caches live there)")
    parser.add_argument("--cold", action="store_true", help="empty the data folder's compile caches first")
    parser.add_argument("--random-weights", action="store_true", help="full-size random weights (GPU)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between requests during the warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="images timed at full speed")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="CPU, demo checkpoints: checks the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from bench.benchmark import environment, options_record, write_result
    from krea2 import GenerationRequest
    from studio.runtime import compile_cache_dir

    data_dir = Path(args.data_dir).expanduser()
    if args.cold:
        shutil.rmtree(compile_cache_dir(data_dir), ignore_errors=True)
    artifacts = list(compile_cache_dir(data_dir).glob("mega-cache-*.bin"))
    out: dict = {"environment": environment(), "cache": "warm" if artifacts else "cold", "data_dir": str(data_dir)}
    side = 256 if args.smoke else 1024
    request = GenerationRequest(prompt="a lighthouse on a cliff at dusk, oil painting", width=side, height=side, seed=1)

    manager = build(args, data_dir)
    manager.start(background=True)
    manager.wait_ready()
    loaded = since_start()
    out["weights_loaded_s"] = loaded  # since the process started
    out["status_when_loaded"] = manager.status().summary()
    out["options"] = options_record(manager.options)
    log.info("weights loaded after %.1f s: %s", loaded, out["status_when_loaded"])  # the log says how far a cut run got

    out["first_image_stage"] = manager.status().warmup_stage  # where the warm-up was when it was asked
    result = manager.generate(request)  # the first image, the moment the weights are there
    out["first_image_after_weights_s"] = since_start() - loaded
    out["first_image_generation_s"] = result.timings.total_s
    log.info("first image %.1f s after the weights (%.2f s generating)", out["first_image_after_weights_s"],
             result.timings.total_s)  # fmt: skip
    during = []
    while manager.status().warmup == "running":
        time.sleep(args.interval)
        if manager.status().warmup != "running":
            break
        asked, stage = since_start(), manager.status().warmup_stage  # compiling (beside it) or capturing (between)
        seconds = manager.generate(request).timings.total_s
        during.append({"asked_after_weights_s": asked - loaded, "stage": stage, "seconds": seconds})
        log.info("during the warm-up: %s", during[-1])
    out["images_during_warmup"] = during
    out["warmup"] = manager.status().warmup
    out["full_speed_after_weights_s"] = since_start() - loaded
    log.info("warm-up %s %.1f s after the weights", out["warmup"], out["full_speed_after_weights_s"])
    times = [manager.generate(request).timings.total_s for _ in range(args.repeats)]
    out["full_speed_image_s"] = statistics.median(times)
    out["full_speed_runs_s"] = times
    out["status"] = manager.status().summary()
    out["compile_cache_files"] = sorted(path.name for path in compile_cache_dir(data_dir).glob("mega-cache-*.bin"))
    write_result(args.out, out, f"startup_{out['cache']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
