"""bench/startup_time.py in CI: `--smoke` runs the start-up measurement on the demo checkpoints on the CPU, so that
the GPU run (first image and full speed, cold and warm) cannot rot. Its numbers mean nothing; its fields are the GPU
run's."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_times_the_first_image_and_full_speed(tmp_path):
    command = [sys.executable, "bench/startup_time.py", "--smoke", "--data-dir", str(tmp_path / "data"), "--cold",
               "--repeats", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = (tmp_path / "out").glob("*_cpu-smoke_startup_cold.json")
    result = json.loads(path.read_text())
    assert result["cache"] == "cold" and result["warmup"] == "off"  # the CPU demo does not compile
    first = result["first_image_after_weights_s"]
    assert 0 < result["weights_loaded_s"] and 0 < result["first_image_generation_s"] <= first
    assert result["full_speed_after_weights_s"] >= result["first_image_after_weights_s"]
    assert result["full_speed_image_s"] > 0 and len(result["full_speed_runs_s"]) == 1
    assert "plan cpu" in result["status"] and "Krea 2 Turbo: ready" in result["status_when_loaded"]
