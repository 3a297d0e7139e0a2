"""Compare's two modes through the page's own handler, on the demo checkpoints and a real store: Raw against Turbo,
and one checkpoint without against with its LoRAs. Both stream the same way (one `_stream_pair`), and both start
from the init image when one is given."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from lora_helpers import random_factors, write_lora
from PIL import Image

from ui.handlers import COMPARE_CHECKPOINTS, COMPARE_LORAS

GREEN = (20, 160, 40)


@pytest.fixture(scope="module")
def lora(lora_manager, lora_dir) -> str:
    write_lora(lora_dir / "compare" / "wash.safetensors",
               random_factors(lora_manager.pipes["turbo"].transformer, seed=31), "kohya")  # fmt: skip
    return "compare/wash"


def picker(name: str = "", weight: float = 1.0) -> list:
    """The Compare picker's 12 values: one LoRA row (or none), the rest empty."""
    return [name, weight, "both"] + ["", 1.0, "both"] * 3


def compare(handlers, mode: str, *inputs, prompt: str = "a blue background", width: int = 256) -> list[tuple]:
    return list(handlers.compare(prompt, "", 3, False, width, width, 1, 3.5, 2, None, mode, "turbo", *inputs))


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_raw_against_turbo_streams_its_progress_images_and_summary(lora_handlers):
    outputs = compare(lora_handlers, COMPARE_CHECKPOINTS, *picker())
    assert outputs[0][0] == "Starting…"
    progress = [out[0] for out in outputs]
    assert any(text.startswith("**Krea 2 Raw** · **Step 1/1**") for text in progress), progress
    assert any(text.startswith("**Krea 2 Turbo** · **Step") for text in progress), progress
    raw_done = outputs[progress.index("Krea 2 Raw done")]
    assert raw_done[1]["label"] == "Krea 2 Raw" and raw_done[2] == gr.skip()  # the left image only
    done, _, _, pair, info = outputs[-1]
    assert done == "**Done**" and pair["label"] == "Krea 2 Raw ↔ Krea 2 Turbo" and len(pair["value"]) == 2
    lines = info.split("  \n")
    assert lines[0].startswith("**Krea 2 Raw**: 1 steps, guidance 3.5, ") and lines[1].startswith("**Krea 2 Turbo**")
    assert lines[2] == "Seed **3** for both · prompt encoded once for both"


def test_without_against_with_loras_starts_both_from_the_init_image(lora_handlers, lora):
    """Before, this mode dropped the init image: both runs were text-to-image at the form's size."""
    init = Image.new("RGB", (256, 256), GREEN)
    from_noise = compare(lora_handlers, COMPARE_LORAS, *picker(lora), width=512)[-1]
    from_image = compare(lora_handlers, COMPARE_LORAS, *picker(lora), init, 0.5, width=512)[-1]
    assert from_image[0] == "**Done**  \nImage input: generated at 256×256.", from_image[0]
    assert from_image[3]["label"] == "Krea 2 Turbo: without ↔ with LoRAs"

    rows = lora_handlers.service.page(lora_handlers.history_filter("", "all", False, True), None).items
    started = [g for g in rows if g.mode == "img2img"]
    assert len(started) == 2 and len({g.comparison_id for g in started}) == 1
    assert {(g.width, g.height, g.strength, g.source_sha256) for g in started} == {
        (256, 256, 0.5, started[0].source_sha256)
    } and started[0].source_sha256  # fmt: skip
    assert sorted(len(g.loras) for g in started) == [0, 1]  # without, then with

    green = np.asarray(init, dtype=np.float32)
    for noise_path, image_path in zip(from_noise[3]["value"], from_image[3]["value"], strict=True):
        from_init = np.abs(pixels(image_path) - green).mean()
        assert from_init < np.abs(pixels(noise_path)[:256, :256] - green).mean() - 5  # it kept the green picture
    without, with_lora = (pixels(path) for path in from_image[3]["value"])
    assert np.abs(without - with_lora).mean() > 1  # and the LoRA still shows


def test_a_lora_one_side_cannot_take_is_refused_before_either_side_runs(lora_handlers, lora_dir):
    """A hostile pass: a LoRA made for another model, for Turbo only, was found out only when Turbo started; Raw had
    run and was kept, and the page showed the new Raw beside the last comparison's Turbo. Now nothing runs and nothing
    is recorded, and a new comparison clears the last one's pictures first."""
    transformer = lora_handlers.service.manager.pipes["turbo"].transformer
    (factors,) = random_factors(transformer, ["transformer_blocks.0.attn.to_q"]).values()
    write_lora(lora_dir / "compare" / "flux.safetensors", {"single_transformer_blocks.0.attn.to_q": factors},
               "diffusers")  # fmt: skip
    before = lora_handlers.service.store.count()
    turbo_only = ["compare/flux", 1.0, "turbo"] + ["", 1.0, "both"] * 3
    outputs = compare(lora_handlers, COMPARE_CHECKPOINTS, *turbo_only, prompt="a red circle")
    assert outputs[0][1:] == (gr.update(value=None),) * 3 + ("",)  # the last comparison cleared
    assert "made for another model" in outputs[-1][0], outputs[-1][0]
    assert all(out[1] in (gr.skip(), gr.update(value=None)) for out in outputs)  # no Raw picture was made
    assert lora_handlers.service.store.count() == before
