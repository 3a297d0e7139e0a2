"""bench/startup_time.py in CI: `--smoke` runs the start-up measurement on the demo checkpoints on the CPU, so that
the GPU run (first image and full speed, cold and warm) cannot rot. Its numbers mean nothing; its fields are the GPU
run's."""

from smoke_helpers import run_smoke


def test_smoke_run_times_the_first_image_and_full_speed(tmp_path):
    result = run_smoke("startup_time.py", "--data-dir", str(tmp_path / "data"), "--cold", "--repeats", "1",
                       out=tmp_path / "out", result="*_cpu-smoke_startup_cold.json")  # fmt: skip
    assert result["cache"] == "cold" and result["warmup"] == "off"  # the CPU demo does not compile
    first = result["first_image_after_weights_s"]
    assert 0 < result["weights_loaded_s"] and 0 < result["first_image_generation_s"] <= first
    assert result["full_speed_after_weights_s"] >= result["first_image_after_weights_s"]
    assert result["full_speed_image_s"] > 0 and len(result["full_speed_runs_s"]) == 1
    assert "plan cpu" in result["status"] and "Krea 2 Turbo: ready" in result["status_when_loaded"]
