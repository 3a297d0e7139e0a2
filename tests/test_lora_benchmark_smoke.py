"""bench/lora_benchmark.py in CI: `--smoke` runs the whole script on the demo checkpoints on the CPU, so that the GPU
benchmark cannot rot between GPU sessions. Its numbers mean nothing; its fields are what the GPU run will report."""

from smoke_helpers import run_smoke


def test_smoke_run_writes_every_field_of_the_gpu_run(tmp_path):
    result = run_smoke(
        "lora_benchmark.py", "--repeats", "1", out=tmp_path, result="*_cpu-smoke_loras.json", timeout=900
    )

    assert result["lora"]["rank"] == 4 and result["lora"]["layers"] == 6 * 8  # every linear layer of the blocks
    turbo = result["turbo"]
    assert turbo["no_lora_s"] > 0 and turbo["one_lora_s"] > 0 and turbo["one_lora_ratio"] > 0
    assert len(turbo["first_use_s"]) == 2 and len(turbo["switch_runs_s"]) == 4
    assert all(layers == 48 for layers in turbo["layers_per_switch"])  # both sets touch every layer: all refolded
    assert set(result["errors"]) == {"fast_vs_bf16_final_latent_rel_l2", "fast_lora_vs_bf16_lora_final_latent_rel_l2",
                                     "lora_effect_final_latent_rel_l2",
                                     "fast_lora_change_vs_bf16_lora_change_rel_l2"}  # fmt: skip
    assert result["errors"]["lora_effect_final_latent_rel_l2"] > 0.01  # the LoRAs change the picture
    assert len(result["memory_cycles"]) == 3 and set(result["memory_growth_gb"]) == {"allocated_gb", "reserved_gb",
                                                                                     "rss_gb"}  # fmt: skip
    assert result["compiled_before"] == result["compiled_after"]
    assert set(result["meets_targets"]) == {"one_lora_ratio", "switch_max_s", "no_memory_growth",
                                            "no_recompile_or_recapture"}  # fmt: skip
    assert result["command"].startswith("python bench/lora_benchmark.py --smoke")
    assert result["partial_writes"] == 4 + 3  # after stages 1-4 and each of the 3 cycles
    assert not (tmp_path / "loras-partial.json").exists()  # gone once the result is written
