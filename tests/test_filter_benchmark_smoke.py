"""bench/filter_benchmark.py in CI: `--smoke` runs the whole script on the CPU (demo checkpoints, a tiny ViT), so the
GPU measurement of the content filter's cost cannot rot before a GPU session runs it. Its numbers mean nothing; its
fields must be the ones the GPU run will write."""

from smoke_helpers import run_smoke


def test_smoke_run_writes_every_field_of_the_gpu_run(tmp_path):
    result = run_smoke("filter_benchmark.py", "--repeats", "5", out=tmp_path, result="*_cpu-smoke_filter-smoke.json")
    assert result["classifier"]["model"] == "ViTForImageClassification"  # Falconsai's architecture, tiny
    assert result["classifier"]["preprocessing"] == "torch, on the device"  # the path a GPU run takes
    assert result["target_ms_per_image"] == 15.0 and result["within_target"] is None  # a CPU run judges nothing
    for batch in ("batch1", "batch4"):
        run = result["filter_alone"][batch]
        assert run["filter_ms"] > 0 and len(run["filter_runs_ms"]) == 5 and run["to_8bit_ms"] > 0
        assert run["filter_ms_per_image"] * int(batch.removeprefix("batch")) == run["filter_ms"]
    end_to_end = result["end_to_end"]
    assert end_to_end["without_s"] > 0 and end_to_end["with_s"] > 0 and "added_ms" in end_to_end
    assert result["command"].startswith("python bench/filter_benchmark.py --smoke")
