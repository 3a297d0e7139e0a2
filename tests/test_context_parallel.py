"""Context parallelism (krea2/context_parallel.py) as far as a CPU can check it honestly: the Krea 2 plan against the
transformer's modules (the demo one and a full-size one on the meta device), the fast path it allows, and the
setting's refusals. Two real ranks (gloo, on the CPU) running the demo model through the plan and the app's
lead/follow path are tests/test_multi_gpu_benchmark_smoke.py's: the same image as one process, a cancel that stops
both ranks after the same step, the ranks' transformer calls in step.

What a CPU cannot show: NCCL across GPUs, prompts whose token count does not split evenly (gloo cannot all-gather
unequal slices; NCCL can), compile on top, and the speed (bench/multi_gpu_benchmark.py, on two GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from krea2.context_parallel import (
    context_parallel_plan,
    enable_context_parallel,
    for_context_parallel,
    keep_text_fusion_local,
    plan_problems,
    refusal,
)
from krea2.speedups import FastPathOptions
from studio.settings import SettingError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def full_size_transformer():
    """Krea 2's real architecture (28 blocks, 48 heads), without memory: on the meta device."""
    from diffusers import Krea2Transformer2DModel

    with torch.device("meta"):
        return Krea2Transformer2DModel()


# ------------------------------------------------------------------------------------------------ the plan
@pytest.mark.parametrize("which", ["demo", "full size"])
def test_the_plan_names_the_transformers_modules_and_inputs(which, manager):
    transformer = manager.pipes["turbo"].transformer if which == "demo" else full_size_transformer()
    plan = context_parallel_plan(transformer)
    last = len(transformer.transformer_blocks) - 1
    assert set(plan) == {"rotary_emb", "transformer_blocks.0", f"transformer_blocks.{last}"}
    assert plan_problems(transformer, plan) == []
    if which == "full size":
        assert last == 27 and transformer.config.num_attention_heads == 48


def test_a_plan_that_does_not_fit_is_named():
    transformer = full_size_transformer()
    plan = context_parallel_plan(transformer)
    wrong = {**plan, "transformer_blocks.28": plan["transformer_blocks.27"], "transformer_blocks.0": {
        "encoder_hidden_states": plan["transformer_blocks.0"]["hidden_states"]}}  # fmt: skip
    problems = plan_problems(transformer, wrong)
    assert "transformer_blocks.28: no such module" in problems
    assert "transformer_blocks.0: forward takes no 'encoder_hidden_states'" in problems


def test_attention_kernels_that_bypass_diffusers_dispatch_are_refused(demo_sources):
    from diffusers import Krea2Transformer2DModel

    from krea2.speedups.attention import FLASH4, Krea2FastAttnProcessor

    transformer = Krea2Transformer2DModel.from_pretrained(demo_sources["turbo"], subfolder="transformer")
    transformer.set_attn_processor(Krea2FastAttnProcessor(kernel=FLASH4))
    with pytest.raises(ValueError, match="FlashAttention-4 bypasses it"):
        enable_context_parallel(transformer, 2)
    options = FastPathOptions(compile=True, fp8=True, attention=FLASH4, step_cache=0.05, denoiser_graphs=True)
    assert for_context_parallel(options) == FastPathOptions(fp8=True)


def test_the_text_fusion_keeps_its_attention_local(demo_sources):
    """`enable_parallelism` gives every attention processor the parallel config; a processor shared by all layers
    must not lose it in the blocks when the text fusion's copies drop it."""
    from diffusers import Krea2Transformer2DModel

    from krea2.speedups.attention import Krea2FastAttnProcessor

    transformer = Krea2Transformer2DModel.from_pretrained(demo_sources["turbo"], subfolder="transformer")
    shared = Krea2FastAttnProcessor()
    transformer.set_attn_processor(shared)
    shared._parallel_config = "the group's config"  # what enable_parallelism sets
    keep_text_fusion_local(transformer)
    fusion = [m.processor for m in transformer.text_fusion.modules() if hasattr(m, "processor")]
    assert fusion and all(p is not shared and p._parallel_config is None for p in fusion)
    assert all(block.attn.processor is shared for block in transformer.transformer_blocks)
    assert shared._parallel_config == "the group's config"


# ------------------------------------------------------------------------------------------------ the setting
def test_the_setting_and_its_refusals(monkeypatch):
    from studio.devices import join_group

    assert load_settings({"KREA2_CONTEXT_PARALLEL": "ulysses"}).context_parallel == "ulysses"
    with pytest.raises(SettingError, match="KREA2_CONTEXT_PARALLEL must be one of off, ulysses"):
        load_settings({"KREA2_CONTEXT_PARALLEL": "ring"})
    assert join_group(Settings()) is None  # off: nothing joins anything
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)  # not under torchrun
    with pytest.raises(SettingError, match=r"torchrun --nproc-per-node N app.py.*this one has 1 and 1 process"):
        join_group(Settings(context_parallel="ulysses"), cuda_count=1)
    with pytest.raises(SettingError, match="choose one"):
        join_group(Settings(context_parallel="ulysses", devices=("cuda:0", "cuda:1")), cuda_count=2)
    assert refusal("ulysses", world_size=2, cuda_count=1) == (
        "KREA2_CONTEXT_PARALLEL=ulysses needs one GPU per process: 2 processes, 1 GPUs"
    )
    assert "use 2, 3, 4, 6 or 8 GPUs, not 5" in refusal("ulysses", world_size=5, cuda_count=8)
    assert refusal("ulysses", world_size=2, cuda_count=2) is None


def test_the_app_refuses_context_parallelism_on_one_device(monkeypatch, capsys):
    import app

    monkeypatch.setenv("KREA2_CONTEXT_PARALLEL", "ulysses")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)  # not under torchrun
    assert app.main(["--demo"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: KREA2_CONTEXT_PARALLEL=ulysses spreads one image over several GPUs")
    assert "\n" not in error.strip()
