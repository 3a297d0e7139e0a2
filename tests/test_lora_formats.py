"""Kohya-style LoRA files load into the demo Krea 2 pipeline exactly as the same LoRA in diffusers' own format."""

from __future__ import annotations

import pytest
import torch
from diffusers import Krea2Pipeline

from krea2.lora_formats import LoraFormatError, convert_kohya, flattened_names, is_kohya, native_name

RANK, ALPHA = 4, 2.0
MODULES = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.up", "text_fusion.refiner_blocks.0.attn.to_out.0"]


@pytest.fixture(scope="module")
def pipe(demo_sources) -> Krea2Pipeline:
    return Krea2Pipeline.from_pretrained(demo_sources["turbo"], torch_dtype=torch.float32)


def _lora(pipe, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down, up): random rank-4 factors, large enough to change a picture (on the committed demo Turbo,
    factors of scale 0.3 moved its pixels by 0.007 on average, 1.0 by 0.28)."""
    generator = torch.Generator().manual_seed(seed)
    layers = dict(pipe.transformer.named_modules())
    return {
        m: (
            torch.randn(RANK, layers[m].in_features, generator=generator),
            torch.randn(layers[m].out_features, RANK, generator=generator),
        )
        for m in MODULES
    }


def _draw(pipe) -> torch.Tensor:
    return pipe(
        "a red circle on a blue background", height=128, width=128, num_inference_steps=2, guidance_scale=0.0,
        generator=torch.Generator().manual_seed(1), output_type="pt",
    ).images  # fmt: skip


def test_native_names_follow_krea():
    assert native_name("transformer_blocks.7.attn.to_out.0") == "blocks.7.attn.wo"
    assert native_name("text_fusion.refiner_blocks.1.ff.down") == "txtfusion.refiner_blocks.1.mlp.down"
    assert native_name("img_in") == "first"
    assert native_name("transformer_blocks.7.norm1") is None


@pytest.mark.parametrize("naming", ["native", "diffusers"])
def test_kohya_file_draws_what_the_diffusers_file_draws(pipe, naming):
    lora = _lora(pipe)
    base = _draw(pipe)

    # The same LoRA in diffusers' format, with alpha/rank folded in by hand.
    peft = {}
    for module, (down, up) in lora.items():
        peft[f"transformer.{module}.lora_A.weight"] = down
        peft[f"transformer.{module}.lora_B.weight"] = up * (ALPHA / RANK)
    pipe.load_lora_weights(peft, adapter_name="peft")
    expected = _draw(pipe)
    pipe.unload_lora_weights()

    kohya = {}
    for module, (down, up) in lora.items():
        name = "lora_unet_" + (native_name(module) if naming == "native" else module).replace(".", "_")
        kohya |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(ALPHA)}
    assert is_kohya(kohya) and not is_kohya(peft)
    pipe.load_lora_weights(convert_kohya(kohya, pipe.transformer), adapter_name="kohya")
    got = _draw(pipe)
    pipe.unload_lora_weights()

    assert (expected - base).abs().mean() > 0.01  # the LoRA changes the picture...
    torch.testing.assert_close(got, expected)  # ...and the kohya file changes it the same way
    torch.testing.assert_close(_draw(pipe), base)  # unloaded: the checkpoint is untouched


def test_unknown_modules_and_half_pairs_are_refused_by_name(pipe):
    down, up = torch.zeros(RANK, 8), torch.zeros(8, RANK)
    with pytest.raises(LoraFormatError, match="lora_unet_blocks_99_attn_wq"):
        convert_kohya({"lora_unet_blocks_99_attn_wq.lora_down.weight": down,
                       "lora_unet_blocks_99_attn_wq.lora_up.weight": up}, pipe.transformer)  # fmt: skip
    with pytest.raises(LoraFormatError, match="only one of"):
        convert_kohya({"lora_unet_blocks_0_attn_wq.lora_down.weight": down}, pipe.transformer)
    with pytest.raises(LoraFormatError, match="not a kohya LoRA key"):
        convert_kohya({"lora_unet_blocks_0_attn_wq.weight": down}, pipe.transformer)


def test_every_linear_module_has_a_kohya_name(pipe):
    names = flattened_names(pipe.transformer)
    linears = {n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(names.values()) == linears
    assert names["txtfusion_refiner_blocks_1_mlp_gate"] == "text_fusion.refiner_blocks.1.ff.gate"
