"""The style LoRA that ships with the demo checkpoints (`demo/checkpoints/loras/pixel-style.safetensors`, trained on
demo Raw by `python -m demo.train --stages import lora`): "train on Raw, run on Turbo", measured in pixels. The base
demo never draws its pixel mosaic, so `grid_edge_share` (how much of a picture's edge energy lies on the mosaic's
block grid) moves only when the LoRA is on."""

from __future__ import annotations

import numpy as np
import pytest

from demo.lora_effect import PROMPTS, demo_manager, edge_shares
from krea2.checkpoints import RAW, TURBO
from studio.runtime import DEMO_LORAS, lora_library
from studio.settings import Settings

LORA = f"{DEMO_LORAS}/pixel-style"


@pytest.fixture(scope="module")
def demo_lora_manager(tmp_path_factory):
    return demo_manager(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("checkpoint", [RAW.key, TURBO.key])
def test_the_pixel_style_lora_shows_on_raw_and_on_turbo(demo_lora_manager, checkpoint):
    """Measured when it was shipped (demo/results/lora-effect-2026-12-06w-cpu.json, the same measure on 4 prompts):
    without it 0.13-0.32 of the edge energy lies on the grid (medians 0.24 on Raw, 0.17 on Turbo; Turbo's purple
    square, all straight edges, 0.50), with it at weight 0.8-1.0 0.35-0.69 (medians 0.40-0.47); on the first 3
    prompts at weight 0.8 every picture gained 0.16-0.35. Here those 3 prompts, at weight 0.8."""
    without = edge_shares(demo_lora_manager, checkpoint, [], prompts=PROMPTS[:3])
    with_lora = edge_shares(demo_lora_manager, checkpoint, [f"{LORA}:0.8"], prompts=PROMPTS[:3])
    assert np.median(without) < 0.3
    assert np.median(with_lora) > 0.34  # measured 0.39 (Raw) and 0.47 (Turbo)
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
