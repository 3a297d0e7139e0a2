"""bench/vae_benchmark.py in CI: `--smoke` runs it on the CPU with the demo VAE, so the GPU measurement of the encoder
against the decoder cannot rot; its numbers mean nothing, its fields and its paths must be the GPU run's."""

from smoke_helpers import run_smoke


def test_smoke_run_times_both_paths_and_matches_stock(tmp_path):
    result = run_smoke("vae_benchmark.py", "--repeats", "2", out=tmp_path, result="*_cpu-smoke_vae64-smoke.json")
    assert result["paths"] == {"decode": "eager", "encode": "eager"}  # FrameDecoder and FrameEncoder did the work
    for side in ("stock", "ours"):
        assert result[side]["encode_s"] > 0 and len(result[side]["decode_runs_s"]) == 2
    assert result["ours_vs_stock_max_abs"]["latents"] < 1e-4 and result["ours_vs_stock_max_abs"]["decoded"] < 1e-4
    assert result["encoder_at_least_as_fast_as_decoder"] is None  # a CPU run judges nothing
