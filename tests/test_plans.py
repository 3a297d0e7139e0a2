"""Placement plans chosen from simulated free memory, with the sizes of the real (full-size) Krea 2 modules, built on
the meta device (no memory)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from krea2.plans import GiB, MemoryBudget, ModelSizes, PlacementPlan, choose_plan, module_bytes, read_budget

GB = 10**9
NAMES = {"turbo": "Krea 2 Turbo", "raw": "Krea 2 Raw"}
CUDA_CONTEXT = int(0.6 * GB)  # what a card's driver and context take before the app measures free memory


@pytest.fixture(scope="module")
def full_size() -> ModelSizes:
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLModel

    with torch.device("meta"):
        turbo, raw = Krea2Transformer2DModel(), Krea2Transformer2DModel()  # class defaults: the real architecture
        text = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}  # fmt: skip
        encoder = Qwen3VLModel(Qwen3VLConfig(text_config=text))
        vae = AutoencoderKLQwenImage()
    for transformer in (turbo, raw):  # as from_pretrained keeps them
        for name, module in transformer.named_modules():
            if name.split(".")[-1] in transformer._keep_in_fp32_modules:
                module.float()
    pipes = [SimpleNamespace(transformer=t, text_encoder=encoder, vae=vae) for t in (turbo, raw)]
    return ModelSizes.of(pipes)


def card(gb: float, host_gb: float = 128) -> MemoryBudget:
    return MemoryBudget(int(gb * GB) - CUDA_CONTEXT, int(host_gb * GB))


def test_sizes_are_krea_2s(full_size):
    """The published sizes: 25.6 GB per bf16 transformer, ~13 GB in fp8, an ~8.9 GB text encoder, a 0.25 GB VAE."""
    assert 25.0 * GB < full_size.transformer(False) < 26.5 * GB
    assert 12.0 * GB < full_size.transformer(True) < 14.0 * GB
    assert 8.5 * GB < full_size.text_encoder_bf16 < 9.5 * GB and full_size.text_encoder_fp8 < 5.5 * GB
    assert full_size.num_blocks == 28 and full_size.num_transformers == 2


def test_big_cards_keep_todays_resident_plan(full_size):
    for gb in (80, 141):
        plan = choose_plan("auto", card(gb), full_size, fp8=True)
        assert plan.name == "gpu" and not plan.managed and plan.placement == "gpu"


def test_a_48_gb_card_holds_both_transformers_in_fp8(full_size):
    plan = choose_plan("auto", card(48), full_size, fp8=True)
    assert (plan.name, plan.fp8, plan.swap, plan.streamed_blocks) == ("gpu-fp8", True, False, 0)
    assert plan.text_encoder == "gpu"
    assert plan.gpu_bytes <= plan.gpu_free


def test_a_24_gb_card_runs_turbo_fp8_resident_and_keeps_raw_warm_in_ram(full_size):
    plan = choose_plan("auto", card(24), full_size, fp8=True)
    assert (plan.name, plan.fp8, plan.swap, plan.streamed_blocks) == ("swap", True, True, 0)
    assert plan.text_encoder == "gpu-fp8" and plan.vae_tiling and plan.pinned
    assert plan.gpu_bytes <= plan.gpu_free
    line = plan.describe("turbo", NAMES)
    assert line.startswith("plan swap (23.4 GB free): Krea 2 Turbo transformer fp8 on the GPU, Krea 2 Raw warm in "
                           "pinned CPU RAM, swapped in on demand; text encoder fp8 on the GPU")  # fmt: skip
    assert plan.images_per_call == 1 and line.endswith("; images one at a time")
    assert choose_plan("auto", card(80), full_size, fp8=True).images_per_call == 0  # a big card: the whole batch
    assert PlacementPlan("swap+stream 3", fp8=True, streamed_blocks=3).images_per_call == 1  # built by hand too
    # Without fp8 for the text encoder, it is streamed while encoding instead.
    assert choose_plan("auto", card(24), full_size, fp8=True, text_encoder_fp8=False).text_encoder == "streamed"


def test_16_and_12_gb_cards_stream_a_few_blocks_then_more(full_size):
    sixteen = choose_plan("auto", card(16), full_size, fp8=True)
    twelve = choose_plan("auto", card(12), full_size, fp8=True)
    assert sixteen.name == f"swap+stream {sixteen.streamed_blocks}" and 1 <= sixteen.streamed_blocks <= 8
    assert twelve.streamed_blocks > sixteen.streamed_blocks and twelve.text_encoder == "streamed"
    assert len(twelve.name) <= 16  # recorded in the history's placement column
    indices = twelve.streamed_indices(28)
    assert len(indices) == twelve.streamed_blocks and indices == sorted(set(indices))
    assert max(b - a for a, b in zip([-1, *indices], [*indices, 28], strict=True)) <= 3  # spread, not bunched


def test_without_fp8_a_24_gb_card_streams_bf16_blocks(full_size):
    plan = choose_plan("auto", card(24), full_size, fp8=False)
    assert not plan.fp8 and plan.name.startswith("swap+stream ") and plan.text_encoder == "streamed"


def test_every_plan_fits_what_it_was_chosen_for_and_shrinks_monotonically(full_size):
    streamed_before = -1
    for gb in (40, 32, 24, 20, 16, 14, 12, 10, 8, 7):
        plan = choose_plan("auto", card(gb), full_size, fp8=True)
        if plan.managed:
            assert plan.gpu_bytes <= plan.gpu_free, gb
            assert plan.streamed_blocks >= streamed_before, gb
            streamed_before = plan.streamed_blocks
    assert choose_plan("auto", card(5), full_size, fp8=True).name == "offload"  # today's path is the last resort


def test_forced_placements_and_no_gpu(full_size):
    assert choose_plan("offload", card(80), full_size, fp8=True).name == "offload"
    assert choose_plan("gpu", card(8), full_size, fp8=True).name == "gpu"  # the user asked for it
    assert choose_plan("cpu", card(80), full_size, fp8=True).name == "cpu"
    assert choose_plan("auto", MemoryBudget(None, 64 * GB), full_size, fp8=False).name == "cpu"


def test_little_host_ram_means_pageable_copies(full_size):
    assert not choose_plan("auto", card(24, host_gb=24), full_size, fp8=True).pinned


def test_module_bytes_count_fp8_linears_as_one_byte_plus_row_scales():
    linear = torch.nn.Linear(64, 32, bias=True)
    assert module_bytes(linear, fp8=False) == 2 * (64 * 32) + 4 * 32  # bias fp32 (a 1-D weight stays fp32)
    assert module_bytes(linear, fp8=True) == 64 * 32 + 4 * 32 + 4 * 32


def test_describe_names_todays_plans():
    assert PlacementPlan("offload", gpu_free=23 * GB).describe() == (
        "plan offload (23.0 GB free): all weights in CPU RAM, streamed layer by layer (bf16)"
    )
    assert PlacementPlan("cpu").describe() == "plan cpu: all weights on the CPU"
    assert GiB == 1024**3


def test_read_budget_names_the_cuda_device_by_index(monkeypatch):
    """The app's device is plain "cuda": torch's get_per_process_memory_fraction refuses a device without an index
    (the H200 run of 2026-12-02 failed every load on it), so read_budget must pass the index, as torch requires."""
    seen = []

    def by_index(name, value):
        def probe(device=None):
            if not isinstance(device, int):  # what torch.cuda._utils._get_device_index raises for torch.device("cuda")
                raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
            seen.append((name, device))
            return value

        return probe

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", by_index("mem_get_info", (30 * GiB, 80 * GiB)))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", by_index("fraction", 0.25))
    monkeypatch.setattr(torch.cuda, "memory_reserved", by_index("reserved", 2 * GiB))
    budget = read_budget(torch.device("cuda"))
    assert budget.gpu_free == 20 * GiB - 2 * GiB  # a quarter of 80 GB, less what this process holds already
    assert seen == [("mem_get_info", 0), ("fraction", 0), ("reserved", 0)]  # "cuda" is the current device
    seen.clear()
    assert read_budget(torch.device("cuda", 1)).gpu_free == 18 * GiB
    assert seen == [("mem_get_info", 1), ("fraction", 1), ("reserved", 1)]
