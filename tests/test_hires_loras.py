"""The hi-res pass (the Upscale buttons) redraws an image with the LoRAs it was made with, found as Reuse settings
finds them (a renamed file by its hash, said in a note); one the LoRA folder no longer has refuses the pass with a
sentence naming it. Through the page's own handler, on the demo checkpoints and a real store."""

from __future__ import annotations

from lora_helpers import random_factors, write_lora


def made_with(handlers, lora_dir, name: str, seed: int) -> tuple[list, list]:
    """A 256-pixel Turbo image made with the LoRA `hires/<name>` at 0.8 (written fresh); (selection, gallery items)."""
    transformer = handlers.service.manager.pipes["turbo"].transformer
    write_lora(lora_dir / "hires" / f"{name}.safetensors", random_factors(transformer, seed=seed), "kohya")
    rows = [f"hires/{name}", 0.8, "both"] + ["", 1.0, "both"] * 3
    done = list(handlers.generate("a red circle", "", "turbo", 2, 0.0, 256, 256, 9, False, 1, [], None, *rows))[-1]
    items = done[4]
    return [items[0]["generation_id"], 0], items


def test_the_loras_of_the_image_are_carried_over(lora_handlers, lora_dir):
    selected, items = made_with(lora_handlers, lora_dir, "kept", seed=41)
    up = list(lora_handlers.upscaler(1.5)(selected, items))[-1]
    assert "**Done**" in up[1] and "LoRAs hires/kept 0.8" in up[3], (up[1], up[3])
    made, hires = lora_handlers.service.get(selected[0]), lora_handlers.service.get(up[4][0]["generation_id"])
    assert (hires.mode, hires.width) == ("hires", 384)
    assert [(x.name, x.weight, x.hash) for x in hires.loras] == [(x.name, x.weight, x.hash) for x in made.loras]
    assert len(hires.loras[0].hash) == 64  # applied: the file was read, not only asked for


def test_a_renamed_lora_is_found_by_its_hash_and_said(lora_handlers, lora_dir):
    selected, items = made_with(lora_handlers, lora_dir, "before", seed=42)
    (lora_dir / "hires" / "before.safetensors").rename(lora_dir / "hires" / "after.safetensors")
    up = list(lora_handlers.upscaler(1.5)(selected, items))[-1]
    assert "**Done**" in up[1] and "; the LoRA hires/before was found as hires/after." in up[1], up[1]
    assert [x.name for x in lora_handlers.service.get(up[4][0]["generation_id"]).loras] == ["hires/after"]


def test_a_missing_lora_refuses_the_pass_with_a_sentence(lora_handlers, lora_dir):
    selected, items = made_with(lora_handlers, lora_dir, "gone", seed=43)
    (lora_dir / "hires" / "gone.safetensors").unlink()
    before = lora_handlers.service.count(lora_handlers.history_filter("", "all", False, False))
    outputs = list(lora_handlers.upscaler(2.0)(selected, items))
    note = outputs[-1][1]
    assert note.startswith("⚠️ The LoRA hires/gone") and "is not in the LoRA folder" in note, note
    assert "\n" not in note and len(outputs) == 1  # refused before anything ran
    assert lora_handlers.service.count(lora_handlers.history_filter("", "all", False, False)) == before
