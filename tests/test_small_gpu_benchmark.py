"""bench/small_gpu_benchmark.py in CI: `--smoke` runs the whole script (parent and one child per run) on the demo
checkpoints on the CPU with simulated free memory, so the GPU benchmark cannot rot before its first GPU run. Its
numbers mean nothing; its fields are the GPU run's."""

from smoke_helpers import run_smoke


def test_smoke_run_measures_a_plan_against_todays_offload_path(tmp_path):
    result = run_smoke("small_gpu_benchmark.py", "--caps", "16", "--cases", "turbo1024", "--repeats", "1",
                       out=tmp_path, result="*_cpu-smoke_small-gpu_16GB_offload-plan.json", timeout=900)  # fmt: skip
    offload, plan = result["runs"]
    assert (offload["path"], offload["plan"]) == ("offload", "offload")
    assert plan["path"] == "plan" and plan["plan"] == "swap+stream 3"  # what a 16 GB card gets, for the demo
    assert "plan swap+stream 3" in plan["status"] and "3 blocks of each streamed" in plan["status"]
    for run in (offload, plan):
        assert run["cap_gb"] == 16.0 and run["peak_host_rss_gb"] > 0 and run["start_s"] > 0
        assert run["warmup_skipped"] == [] and run["log_errors"] == []  # nothing failed on the way
        for case in run["cases"].values():
            assert "error" not in case, case
            assert case["checkpoint"] == "turbo" and (case["width"], case["steps"]) == (256, 2)
            assert case["seconds"] > 0 and len(case["runs_s"]) == 1 and "peak_gpu_gb" in case
            assert set(case["phases_ms"]) == {"encode_ms", "denoise_ms", "decode_ms", "total_ms"}
    assert len(plan["switch_s"]) == 2 and "switch_s" not in offload  # Raw swapped in and Turbo back, from RAM
    assert result["command"].startswith("python bench/small_gpu_benchmark.py --smoke")


def test_a_run_that_times_out_keeps_the_end_of_its_log(tmp_path, monkeypatch):
    """A timed-out child is a result too, with where it was: the first GPU run's plan timed out and said nothing."""
    import json
    import subprocess
    import sys

    from bench import small_gpu_benchmark

    def timing_out(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"], stderr=b"placing\nwarm-up: compiling raw\n")

    monkeypatch.setattr(subprocess, "run", timing_out)
    monkeypatch.setattr(sys, "argv", ["small_gpu_benchmark.py", "--smoke", "--caps", "24", "--paths", "plan",
                                      "--timeout", "7", "--out", str(tmp_path)])  # fmt: skip
    assert small_gpu_benchmark.main() == 0
    (written,) = tmp_path.glob("*small-gpu_24GB_plan.json")
    (run,) = json.loads(written.read_text())["runs"]
    assert run["error"] == "timed out after 7 s" and run["log_tail"] == ["placing", "warm-up: compiling raw"]
