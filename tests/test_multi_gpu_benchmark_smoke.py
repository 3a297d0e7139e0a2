"""bench/multi_gpu_benchmark.py in CI: `--smoke` under torchrun with two CPU ranks (gloo) runs the whole script on the
demo checkpoints, so the GPU benchmark cannot rot between GPU sessions. Its timings mean nothing; its fields are what
the GPU run will report.

The run is also the CPU's test of context parallelism across two real processes, through the app's own path
(`ContextParallelManager`: rank 0 sends each request, rank 1 follows): the image is the one a single process draws
(fp32 on the CPU: equal up to rounding), a cancel from rank 0 stops both ranks after the same step, and every
transformer call on one rank had its partner on the other."""

import json
import subprocess
import sys
from pathlib import Path

from app_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_under_torchrun_writes_every_field_of_the_gpu_run(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()),
               "bench/multi_gpu_benchmark.py", "--smoke", "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [path] = tmp_path.glob("*_cpu-smoke_multi-gpu-x1_compare-throughput-context-parallel.json")
    result = json.loads(path.read_text())

    compare = result["compare"]
    for gpus in (1, 2):
        assert compare[f"gpus{gpus}_compare_s"] > 0 and len(compare[f"gpus{gpus}_runs_s"]) == 1
        assert compare[f"gpus{gpus}_raw_s"] > 0 and compare[f"gpus{gpus}_turbo_s"] > 0
    assert compare["speedup"] > 0 and compare["gpus2_vs_slower_side"] > 0

    throughput = result["throughput"]
    assert throughput["workers1"]["served"] == [throughput["users"]]
    assert sum(throughput["workers2"]["served"]) == throughput["users"] and min(throughput["workers2"]["served"]) > 0
    for workers in ("workers1", "workers2"):
        run = throughput[workers]
        assert run["images_per_s"] > 0 and run["latency_max_s"] >= run["latency_median_s"] > 0
    assert throughput["throughput_ratio"] > 0

    parallel = result["context_parallel"]
    assert parallel["ranks"] == 2 and "Ulysses over 2 GPUs" in parallel["cp_fast_path"]
    assert set(parallel["cases"]) == {"turbo", "raw"}
    for case in parallel["cases"].values():
        assert case["single_s"] > 0 and case["cp_s"] > 0 and case["speedup"] > 0
        assert case["cp_vs_single_max_abs_pixel"] <= 1  # one image across two ranks = the one-process image
    assert parallel["cancel"]["cancelled"] and parallel["cancel"]["next_generation_s"] > 0
    calls = parallel["transformer_calls_per_rank"]
    assert len(calls) == 2 and calls[0] == calls[1] > 0 and parallel["ranks_in_step"]
    assert parallel["compiled"] == {"skipped": "no compile on the CPU"}
    assert set(parallel["meets_targets"]) == {"cp_turbo2048_speedup"}
    assert result["command"].startswith("python bench/multi_gpu_benchmark.py --smoke")
