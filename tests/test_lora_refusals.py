"""Every way a LoRA file can be unusable is refused before anything is folded, with one sentence naming the file and
what was expected; and each file is named by the hash other tools know it by (AutoV3)."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import pytest
import torch
from lora_helpers import random_factors, write_lora
from safetensors.torch import save_file

from krea2.demo import build_transformer
from krea2.errors import LoraError
from krea2.lora_files import autov3_hash, read_lora, require_safetensors
from krea2.lora_fold import target_shapes
from krea2.lora_weights import AI_TOOLKIT, DIFFUSERS, KOHYA, KREA, lora_weights


@pytest.fixture(scope="module")
def transformer():
    return build_transformer()


@pytest.fixture(scope="module")
def shapes(transformer):
    return target_shapes(transformer)


def check(path, shapes):
    return lora_weights(read_lora(path), path.stem, autov3_hash(path), shapes)


def refusal(path, shapes) -> str:
    with pytest.raises(LoraError) as caught:
        check(path, shapes)
    message = str(caught.value)
    assert "\n" not in message and path.stem in message and message.endswith("."), message
    return message


@pytest.mark.parametrize(("fmt", "kind"), [("diffusers", DIFFUSERS), ("krea", KREA), ("ai-toolkit", AI_TOOLKIT),
                                           ("kohya", KOHYA)])  # fmt: skip
def test_each_format_is_recognised_with_its_scale(tmp_path, transformer, shapes, fmt, kind):
    factors = random_factors(transformer)
    weights = check(write_lora(tmp_path / f"{fmt}.safetensors", factors, fmt), shapes)
    assert weights.format == kind and set(weights.modules) == set(factors)
    module = "transformer_blocks.0.attn.to_q"
    got = weights.modules[module].scale * weights.modules[module].up @ weights.modules[module].down
    torch.testing.assert_close(got, 2.0 * factors[module][1] @ factors[module][0])  # alpha 8 / rank 4


def test_file_level_refusals(tmp_path, shapes):
    with pytest.raises(LoraError, match=r"The file style.ckpt is not a .safetensors file; only .safetensors LoRAs"):
        require_safetensors("uploads/style.ckpt")
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"x": torch.ones(1)}, pickled)  # a pickle under a .safetensors name is still no safetensors file
    assert "is not a .safetensors file" in refusal(pickled, shapes)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "is an empty file" in refusal(empty, shapes)
    cut = tmp_path / "cut.safetensors"
    write_lora(tmp_path / "whole.safetensors", random_factors(build_transformer()), "kohya")
    cut.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:200])
    assert "header length does not fit" in refusal(cut, shapes) or "does not match its data" in refusal(cut, shapes)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    assert "not valid JSON" in refusal(garbage, shapes)
    nothing = tmp_path / "nothing.safetensors"
    save_file({}, nothing, metadata={"note": "no tensors"})
    assert "holds no tensors" in refusal(nothing, shapes)
    mismatched = tmp_path / "mismatched.safetensors"
    header = json.dumps({"a.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    mismatched.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)
    assert "does not match its data" in refusal(mismatched, shapes)


def save(path, tensors, metadata=None):
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def pair(module: str, down, up, a: str = "lora_A", b: str = "lora_B") -> dict:
    return {f"{module}.{a}.weight": down, f"{module}.{b}.weight": up}


def test_content_refusals_say_what_was_expected(tmp_path, transformer, shapes):
    factors = random_factors(transformer, ["transformer_blocks.0.attn.to_q"])
    (down, up) = factors["transformer_blocks.0.attn.to_q"]
    key = "transformer.transformer_blocks.0.attn.to_q"
    full_model = save(tmp_path / "checkpoint.safetensors", {"transformer_blocks.0.attn.to_q.weight": torch.ones(2, 2)})
    assert "is not a LoRA" in refusal(full_model, shapes) and "expected keys like" in refusal(full_model, shapes)
    flux = save(tmp_path / "flux.safetensors", pair("transformer.single_transformer_blocks.0.attn.to_q", down, up))
    assert "made for another model" in refusal(flux, shapes)
    sdxl = pair("lora_unet_down_blocks_0_attentions_0_proj_in", down, up, "lora_down", "lora_up")
    assert "not in the Krea 2 transformer" in refusal(save(tmp_path / "sdxl.safetensors", sdxl), shapes)
    flux_comfy = save(
        tmp_path / "flux-comfy.safetensors", pair("diffusion_model.double_blocks.0.img_attn.qkv", down, up)
    )
    assert "cannot map onto Krea 2" in refusal(flux_comfy, shapes)
    text_encoder = save(tmp_path / "te.safetensors", {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up,
                                                      "text_encoder.layers.0.q_proj.lora_A.weight": down})  # fmt: skip
    assert "only the transformer takes LoRAs" in refusal(text_encoder, shapes)
    full_size = save(tmp_path / "full-size.safetensors", {f"{key}.lora_A.weight": torch.ones(4, 6144),
                                                          f"{key}.lora_B.weight": torch.ones(6144, 4)})  # fmt: skip
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert f"maps {width} features to {width}, but the LoRA's maps 6144 to 6144" in refusal(full_size, shapes)
    ranks = save(tmp_path / "ranks.safetensors", {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up[:, :2]})
    assert f"its two matrices have different ranks ({down.shape[0]} and 2)" in refusal(ranks, shapes)
    kohya = pair("lora_unet_blocks_0_attn_wq", down, up, "lora_down", "lora_up")
    kohya["lora_unet_blocks_0_attn_wq.alpha"] = torch.tensor([4.0, 8.0])  # a hostile pass: "Something went wrong"
    assert "has an alpha of 2 values, not one" in refusal(save(tmp_path / "alphas.safetensors", kohya), shapes)
    nan = save(tmp_path / "nan.safetensors", {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up * torch.nan})
    assert "NaN or infinite" in refusal(nan, shapes)
    for fmt in ("krea", "kohya", "diffusers"):  # an alpha tensor (kohya folds it into lora_up) or PEFT's metadata
        for alpha in (math.nan, math.inf):
            bad_alpha = write_lora(tmp_path / f"alpha-{fmt}-{alpha}.safetensors", factors, fmt, alpha=alpha)
            assert "NaN or infinite" in refusal(bad_alpha, shapes), (fmt, alpha)
    untrained = save(tmp_path / "untrained.safetensors", {f"{key}.lora_A.weight": down,
                                                          f"{key}.lora_B.weight": torch.zeros_like(up)})  # fmt: skip
    assert "would change nothing" in refusal(untrained, shapes)
    half = save(tmp_path / "half.safetensors", {f"{key}.lora_A.weight": down})
    assert "has lora_A but no lora_B" in refusal(half, shapes)
    dora = save(tmp_path / "dora.safetensors", {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up,
                                                f"{key}.lora_magnitude_vector": torch.ones(width)})  # fmt: skip
    assert "uses DoRA" in refusal(dora, shapes)
    integers = save(tmp_path / "integers.safetensors", {f"{key}.lora_A.weight": down.to(torch.int32),
                                                        f"{key}.lora_B.weight": up.to(torch.int32)})  # fmt: skip
    assert "floating-point" in refusal(integers, shapes)


def test_autov3_is_the_hash_of_the_tensor_data_and_ignores_metadata(tmp_path):
    tensors = {
        "transformer.img_in.lora_A.weight": torch.randn(4, 64),
        "transformer.img_in.lora_B.weight": torch.ones(192, 4),
    }
    first = save(tmp_path / "a.safetensors", tensors, {"ss_output_name": "first"})
    second = save(tmp_path / "b.safetensors", tensors, {"ss_output_name": "renamed", "modelspec.title": "x"})
    data = first.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert autov3_hash(first) == hashlib.sha256(data[8 + length :]).hexdigest()
    assert hashlib.sha256(data).hexdigest() != hashlib.sha256(second.read_bytes()).hexdigest()  # other files...
    assert autov3_hash(second) == autov3_hash(first)  # ...the same LoRA
