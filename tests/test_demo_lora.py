"""The style LoRA that ships with the demo checkpoints (`demo/checkpoints/loras/pixel-style.safetensors`, trained on
demo Raw by `python -m demo.train --stages import lora`): "train on Raw, run on Turbo", measured in pixels. The base
demo never draws its pixel mosaic, so `grid_edge_share` (how much of a picture's edge energy lies on the mosaic's
block grid) moves only when the LoRA is on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demo.score import grid_edge_share
from krea2.checkpoints import RAW, TURBO
from krea2.request import GenerationRequest
from studio.runtime import DEMO_LORAS, lora_library
from studio.settings import Settings

LORA = f"{DEMO_LORAS}/pixel-style"
PROMPTS = ("a red circle on a blue background", "a yellow star on a green background",
           "a purple square on a white background")  # fmt: skip
STEPS = {RAW.key: 20, TURBO.key: TURBO.default_steps}  # Raw's 52 steps draw the same style, at 2.6x the CPU time


@pytest.fixture(scope="module")
def demo_lora_manager(demo_sources, tmp_path_factory):
    """The demo app's manager: its LoRA library as `python app.py` builds it without a GPU."""
    from krea2.loading import PipelineLoader
    from krea2.manager import ModelManager

    library = lora_library(Settings(demo=True), tmp_path_factory.mktemp("data"))
    manager = ModelManager(PipelineLoader(demo_sources, torch.float32), demo=True, loras=library)
    manager.start(background=False)
    return manager


def shares(manager, checkpoint: str, loras: list[str]) -> list[float]:
    found = []
    for seed, prompt in enumerate(PROMPTS):
        request = GenerationRequest(prompt=prompt, checkpoint=checkpoint, width=256, height=256,
                                    steps=STEPS[checkpoint], seed=seed, loras=loras)  # fmt: skip
        found.append(grid_edge_share(manager.generate(request).images[0]))
    return found


@pytest.mark.parametrize("checkpoint", [RAW.key, TURBO.key])
def test_the_pixel_style_lora_shows_on_raw_and_on_turbo(demo_lora_manager, checkpoint):
    """Measured when it was shipped (demo/results/lora-effect-2026-12-02-cpu.json): without it 0.04-0.25 of the edge
    energy lies on the grid, with it at weight 0.5-1.5 0.40-0.59, on both checkpoints."""
    without = shares(demo_lora_manager, checkpoint, [])
    with_lora = shares(demo_lora_manager, checkpoint, [f"{LORA}:0.8"])
    assert np.median(without) < 0.3
    assert np.median(with_lora) > 0.38
    assert all(w > o + 0.12 for w, o in zip(with_lora, without, strict=True))  # every picture, not just on average


def test_the_demo_app_lists_the_demo_lora_and_writes_nothing_to_the_lora_folder(tmp_path):
    """`python app.py` without a GPU (or with --demo) offers the LoRA in the picker, read from where it ships; the
    user's LoRA folder (perhaps shared with the real model) gets no demo-only file, and a file of the same name there
    wins."""
    demo = lora_library(Settings(demo=True), tmp_path)
    assert LORA in demo.names()
    assert demo.get(LORA).path.parent.name == "loras" and not (tmp_path / "loras").exists()
    own = tmp_path / "loras" / DEMO_LORAS / "pixel-style.safetensors"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"the user's own file")
    assert demo.get(LORA).path == own and demo.names().count(LORA) == 1
