"""The small-GPU plans' mechanics, run on the CPU with the demo checkpoints: the same images as everything resident,
swapping transformers from their CPU copies (never from disk), streamed blocks through diffusers' group offloading,
and a plan chosen by the manager from simulated free memory, named in the status line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from krea2 import GenerationRequest
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.plans import GiB, MemoryBudget, PlacementPlan
from krea2.speedups.compile import offloaded

REQUEST = {"prompt": "a red circle on a blue background", "width": 256, "height": 256, "seed": 5, "steps": 3}
SWAP = PlacementPlan("swap", swap=True, text_encoder="gpu", vae_tiling=True)
STREAM = PlacementPlan("swap+stream 2", swap=True, streamed_blocks=2, text_encoder="streamed")


def planned(demo_sources, **options) -> ModelManager:
    manager = ModelManager(PipelineLoader(demo_sources, torch.float32), device="cpu", demo=True, **options)
    manager.start(background=False)
    assert manager.status().checkpoints["raw"].state == "ready", manager.status().summary()
    return manager


def image(manager: ModelManager, checkpoint: str) -> np.ndarray:
    return np.asarray(manager.generate(GenerationRequest(**REQUEST, checkpoint=checkpoint)).images[0])


@pytest.mark.parametrize("plan", [SWAP, STREAM], ids=lambda plan: plan.name)
def test_a_plan_draws_what_everything_resident_draws(plan, demo_sources, manager):
    planned_manager = planned(demo_sources, plan=plan)
    for checkpoint in ("turbo", "raw", "turbo"):
        assert np.array_equal(image(planned_manager, checkpoint), image(manager, checkpoint)), checkpoint
    assert planned_manager.residency.swaps == 2
    assert planned_manager.status().placement == plan.name  # what each image records


def test_switching_checkpoints_never_reads_from_disk(demo_sources):
    manager = planned(demo_sources, plan=SWAP)

    def no_disk(*_args, **_kwargs):
        raise AssertionError("a checkpoint was read from disk")

    manager.loader.load_full = manager.loader.load_transformer = no_disk
    residency = manager.residency
    raw = manager.pipes["raw"].transformer
    parked = {name: tensor.data_ptr() for name, tensor in residency.cpu_copies["raw"].items()}
    image(manager, "raw")
    image(manager, "turbo")
    # Raw went back to the very CPU tensors it had before: nothing was copied, let alone read.
    assert {name: tensor.data_ptr() for name, tensor in raw.state_dict().items()} == parked
    assert manager.load_count == 2 and residency.swaps == 2 and residency.last_swap_s >= 0


def test_streamed_blocks_and_the_text_encoder_go_through_group_offloading(demo_sources):
    manager = planned(demo_sources, plan=STREAM)
    for pipe in manager.pipes.values():
        blocks = pipe.transformer.transformer_blocks
        streamed = [index for index, block in enumerate(blocks) if offloaded(block)]
        assert streamed == STREAM.streamed_indices(len(blocks)) and len(streamed) == 2
    assert offloaded(manager.pipes["turbo"].text_encoder)
    assert not offloaded(manager.pipes["turbo"].vae)


def test_the_manager_chooses_a_plan_from_simulated_free_memory(demo_sources):
    """The demo model is tiny, so a few GB is a "24 GB card" for it: one transformer resident, the other swapped."""
    small = planned(demo_sources, placement="auto", memory_probe=lambda device: MemoryBudget(5 * GiB, 64 * GiB))
    assert small.plan.name == "swap" and small.residency is not None
    line = small.status().summary()
    assert "plan swap (5.4 GB free): Krea 2 Turbo transformer bf16 on the GPU, Krea 2 Raw warm in" in line
    image(small, "raw")
    assert "Krea 2 Raw transformer bf16 on the GPU, Krea 2 Turbo warm in" in small.status().summary()

    big = planned(demo_sources, placement="auto", memory_probe=lambda device: MemoryBudget(40 * GiB, 64 * GiB))
    assert big.plan.name == "gpu" and big.residency is None
    assert "plan gpu (42.9 GB free): all weights on the GPU" in big.status().summary()

    none = planned(demo_sources, placement="auto")  # the real probe: this machine has no GPU
    assert none.plan.name == "cpu" and "plan cpu: all weights on the CPU" in none.status().summary()


def test_a_pre_quantised_fp8_checkpoint_swaps_and_streams_in_fp8(tmp_path, demo_sources):
    """The 24/16 GB user's case: fp8 scaled single files, loaded straight into fp8, under a swapping plan with streamed
    blocks: the fp8 weights travel between CPU RAM and the device as they are, and switching back gives the same
    image."""
    from diffusers import Krea2Transformer2DModel
    from single_file_helpers import fp8_scaled, krea_state, write
    from torchao.quantization import Float8Tensor

    files = {}
    for key in ("turbo", "raw"):
        transformer = Krea2Transformer2DModel.from_pretrained(demo_sources[key], subfolder="transformer")
        state, _ = fp8_scaled(krea_state(transformer.state_dict()), "old")
        files[key] = str(write(tmp_path / f"krea2_{key}_fp8_scaled.safetensors", state))
    loader = PipelineLoader(files, torch.float32, shared=demo_sources["turbo"], fp8_weights=True)
    manager = ModelManager(loader, device="cpu", demo=True, plan=STREAM)
    manager.start(background=False)
    turbo, raw, turbo_again = (image(manager, checkpoint) for checkpoint in ("turbo", "raw", "turbo"))
    assert np.array_equal(turbo, turbo_again) and not np.array_equal(turbo, raw)
    for pipe in manager.pipes.values():
        for block in pipe.transformer.transformer_blocks:
            assert isinstance(block.attn.to_qkvg.weight, Float8Tensor)  # resident, parked and streamed alike
    assert manager.residency.swaps == 2


def test_streamed_blocks_reach_group_offloading_unpinned(monkeypatch):
    """Group offloading keeps pinned CPU copies of its own. A block pinned before it would hand it the weights
    themselves as their copies, and diffusers moves fp8 (torchao) weights to the GPU by swapping tensor contents, so
    the "copy" went to the GPU with them and the next step failed to pin it (the 16 GB plan on an H200). Resident
    blocks are still pinned: their copies are what a swap moves in."""
    from krea2 import residency as residency_module
    from krea2.demo import build_demo_pipeline
    from krea2.residency import Residency

    pinned: set[int] = set()
    monkeypatch.setattr(residency_module, "_pinned", lambda tensor: pinned.add(id(tensor)) or tensor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pinning is attempted only with CUDA
    pipes = {key: build_demo_pipeline(transformer_seed=seed, is_distilled=key == "turbo") for key, seed in
             (("turbo", 1), ("raw", 2))}  # fmt: skip
    transformers = {key: pipe.transformer for key, pipe in pipes.items()}
    plan = PlacementPlan("swap+stream 2", swap=True, streamed_blocks=2, text_encoder="gpu")
    turbo = pipes["turbo"]
    Residency(plan, transformers, turbo.text_encoder, turbo.vae, torch.device("cpu"), active="turbo").place(fp8=False)
    for transformer in transformers.values():
        streamed = set(plan.streamed_indices(len(transformer.transformer_blocks)))
        for index, block in enumerate(transformer.transformer_blocks):
            was_pinned = {id(p) in pinned for p in block.parameters()}
            assert was_pinned == ({False} if index in streamed else {True}), index
