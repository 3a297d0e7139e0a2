"""bench/benchmark.py in CI: `--smoke` runs the whole script on the demo checkpoints on the CPU, so that the GPU
benchmark cannot rot between GPU sessions. Its numbers mean nothing; its fields must be the GPU run's."""

import json

from smoke_helpers import ROOT, run_smoke

# The committed GPU run whose Turbo 1024² result the benchmark must keep producing, field for field.
GPU_RUN = ROOT / "bench/results/2026-11-26T0943_NVIDIA-H100-80GB-HBM3_turbo1024-turbo2048_exact-fast-nographs.json"
NEEDS_CUDA = ("_denoiser_graphs",)  # what a mode records only where CUDA graphs exist


def test_smoke_run_writes_the_gpu_runs_fields(tmp_path):
    smoke = run_smoke("benchmark.py", "--cases", "turbo1024,raw1024", "--modes", "exact,fast,nographs,fp8attn",
                      "--step-cache", "0.05", "--repeats", "1", out=tmp_path,
                      result="*_cpu-smoke_turbo1024-raw1024_exact-fast-nographs-fp8attn.json")  # fmt: skip
    gpu = json.loads(GPU_RUN.read_text())

    assert set(gpu) <= set(smoke)
    expected = {key for key in gpu["cases"]["turbo1024"] if not key.endswith(NEEDS_CUDA)}
    turbo = smoke["cases"]["turbo1024"]
    assert expected <= set(turbo), expected - set(turbo)
    for mode in ("stock", "exact", "fast", "nographs"):
        assert turbo[f"{mode}_s"] > 0 and len(turbo[f"{mode}_runs_s"]) == 1
    assert set(turbo["fast_phases_ms"]) == {"encode_ms", "denoise_ms", "decode_ms", "total_ms"}
    assert "fp8_velocity_rel_l2" in smoke["errors"] and smoke["cudnn_fp8_unavailable_reason"]

    raw = smoke["cases"]["raw1024"]
    assert raw["cache0.05_on_top_of"] == "fast"  # the step cache measured against the last mode, Raw only
    assert "cache0.05_s" not in turbo and "nographs_s" not in raw  # nographs: Turbo only
    skipped, calls = map(int, raw["cache0.05_skipped_calls"].split("/"))
    assert calls == 2 * raw["steps"] and 0 <= skipped <= calls  # two guided calls per step, each counted
    assert smoke["command"].startswith("python bench/benchmark.py --smoke")


def test_img2img_benchmark_smoke_run(tmp_path):
    """bench/img2img_benchmark.py (issue 17's GPU benchmark) end to end on the demo checkpoints: its fields exist."""
    result = run_smoke("img2img_benchmark.py", "--repeats", "1", out=tmp_path,
                       result="*_cpu-smoke_img2img-turbo1024_padfree.json")  # fmt: skip
    case = result["cases"]["turbo1024"]
    assert case["steps_run"] == 1 and case["stock_s"] > 0 and case["padfree_s"] > 0
    assert case["padfree_vs_stock_max_abs_pixel"] < 0.02  # the same image as the stock loop, up to rounding
    # the same init-image latents as the stock encoder's, up to rounding, on latents far larger than that
    assert case["padfree_vs_stock_image_latents_max_abs"] < 0.01 * case["stock_image_latents_abs_max"]
    assert case["vae_encode_s"] > 0 and case["vae_decode_s"] > 0
    assert result["command"].startswith("python bench/img2img_benchmark.py --smoke")
