"""Call 4 (session f), issue 19: which compile warm-up generation fails on the 24 GB `swap` plan. Call 3's warm-up
ended "failed" after 324 s with no reason kept. Same full-size random weights, cap, plan and warm-up requests, but
eager (a cold compile takes longer than this session's device time left): each request's peak GPU memory, time and
error, to find the shape that does not fit.

    python bench/runs/2026-12-03a-call4.py > $OUT/warmup-shapes.json
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.benchmark import InMemoryLoader, build_full_size
from krea2.manager import ModelManager
from krea2.plans import read_budget
from krea2.speedups.compile import warmup_requests
from studio.runtime import fast_path_options
from studio.settings import Settings

CAP_GB = 24

turbo, raw = build_full_size("cuda")
for module in (turbo.transformer, turbo.text_encoder, turbo.vae, raw):
    module.to("cpu")
gc.collect()
torch.cuda.empty_cache()
torch.cuda.set_per_process_memory_fraction(CAP_GB * 1e9 / torch.cuda.get_device_properties(0).total_memory)
options = dataclasses.replace(fast_path_options(Settings(), cuda=True, demo=False), compile=False)
manager = ModelManager(InMemoryLoader(turbo, raw), device="cuda", placement="auto", options=options,
                       memory_probe=read_budget)  # fmt: skip
manager.start(background=False)
report: dict = {"cap_gb": CAP_GB, "status": manager.status().summary(), "requests": []}
requests = warmup_requests(manager.pipes)
requests.sort(key=lambda request: request.checkpoint != manager.residency.active)  # as ModelManager.warm_up does
for request in requests:
    torch.cuda.reset_peak_memory_stats()
    start, error = time.perf_counter(), None
    try:
        manager.generate(request)
    except Exception as failure:  # noqa: BLE001 - the point of the run
        cause = failure.__cause__ or failure
        error = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
    report["requests"].append({
        "checkpoint": request.checkpoint, "size": f"{request.width}x{request.height}", "images": request.num_images,
        "guidance": request.guidance,
        "prompt_words": len(request.prompt.split()), "seconds": round(time.perf_counter() - start, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2), "error": error,
    })  # fmt: skip
    print(report["requests"][-1], file=sys.stderr, flush=True)
print(json.dumps(report, indent=1))
