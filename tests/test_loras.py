"""LoRAs on the demo checkpoints, end to end through the model manager: real LoRA files in every supported format,
folded into the loaded weights; the images measured in pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Krea2Pipeline, Krea2Transformer2DModel
from lora_helpers import FORMATS, random_factors, transformer_inputs, write_lora

from krea2 import GenerationRequest
from krea2.demo import build_transformer
from krea2.errors import InvalidRequest, LoraError
from krea2.lora_fold import LoraPatcher, lora_targets, patcher_of, target_shapes
from krea2.lora_library import LoraLibrary
from krea2.speedups.attention import install_fast_attention
from krea2.speedups.projections import fuse_projections

PROMPT = "a red circle on a blue background"
SMALL = {"width": 256, "height": 256, "steps": 2, "seed": 3}
VISIBLE = 2.0  # mean absolute change, in 8-bit levels, that a LoRA must make to count as an effect


@pytest.fixture(scope="module")
def style(lora_manager, lora_dir):
    """One LoRA, saved in every supported format: {format: name}."""
    factors = random_factors(lora_manager.pipes["turbo"].transformer)
    return {fmt: write_lora(lora_dir / f"style-{fmt}.safetensors", factors, fmt).stem for fmt in FORMATS}


def draw(manager, checkpoint="turbo", loras=()):
    result = manager.generate(GenerationRequest(prompt=PROMPT, checkpoint=checkpoint, loras=loras, **SMALL))
    return np.asarray(result.images[0], dtype=np.int16), result


def test_weight_zero_is_the_checkpoint_exactly(lora_manager, style):
    base, _ = draw(lora_manager)
    zero, result = draw(lora_manager, loras=[f"{style['diffusers']}:0"])
    assert np.array_equal(zero, base)
    assert [(lora.name, lora.weight) for lora in result.loras] == [(style["diffusers"], 0.0)]  # recorded all the same
    with_lora, _ = draw(lora_manager, loras=[f"{style['diffusers']}:1"])
    assert np.abs(with_lora - base).mean() > VISIBLE
    again, _ = draw(lora_manager)  # and back: the checkpoint's own weights, bit for bit
    assert np.array_equal(again, base)


def test_the_same_lora_in_each_format_draws_the_same_image(lora_manager, style):
    base, _ = draw(lora_manager)
    images = {fmt: draw(lora_manager, loras=[f"{name}:0.8"])[0] for fmt, name in style.items()}
    for fmt, image in images.items():
        assert np.array_equal(image, images["diffusers"]), fmt
    assert np.abs(images["diffusers"] - base).mean() > VISIBLE


def test_the_effect_shows_on_raw_and_turbo_and_grows_with_the_weight(lora_manager, style):
    name = style["kohya"]
    for checkpoint in ("raw", "turbo"):
        base, _ = draw(lora_manager, checkpoint)
        half = np.abs(draw(lora_manager, checkpoint, [f"{name}:0.5"])[0] - base).mean()
        full = np.abs(draw(lora_manager, checkpoint, [f"{name}:1.5"])[0] - base).mean()
        assert VISIBLE < half < full, (checkpoint, half, full)


def test_a_lora_aimed_at_one_checkpoint_leaves_the_other_alone(lora_manager, style):
    base_turbo, _ = draw(lora_manager, "turbo")
    base_raw, _ = draw(lora_manager, "raw")
    only_raw = [{"name": style["krea"], "weight": 1.0, "target": "raw"}]
    turbo, result = draw(lora_manager, "turbo", only_raw)
    assert np.array_equal(turbo, base_turbo) and result.loras == []  # not applied, not recorded
    raw, result = draw(lora_manager, "raw", only_raw)
    assert np.abs(raw - base_raw).mean() > VISIBLE and result.loras[0].checkpoint == "raw"


def test_two_loras_add_up_and_switching_reloads_nothing(lora_manager, style, lora_dir):
    loads, pipes = lora_manager.load_count, dict(lora_manager.pipes)
    other = write_lora(lora_dir / "other.safetensors", random_factors(pipes["turbo"].transformer, seed=5), "diffusers")
    base, _ = draw(lora_manager)
    first = draw(lora_manager, loras=[f"{style['diffusers']}:0.7"])[0]
    both = draw(lora_manager, loras=[f"{style['diffusers']}:0.7", f"{other.stem}:-0.6"])[0]
    assert np.abs(both - first).mean() > VISIBLE
    assert np.array_equal(draw(lora_manager)[0], base)
    assert lora_manager.load_count == loads and lora_manager.pipes == pipes


def test_folding_computes_what_diffusers_own_lora_loader_computes(demo_sources, lora_dir):
    """diffusers' PEFT adapters (load_lora_weights) and our folded weights, same file, same transformer call."""
    path = write_lora(lora_dir / "reference.safetensors", random_factors(build_transformer(), seed=9), "diffusers")
    stock = Krea2Transformer2DModel.from_pretrained(demo_sources["turbo"], subfolder="transformer").eval()
    ours = Krea2Transformer2DModel.from_pretrained(demo_sources["turbo"], subfolder="transformer").eval()
    with torch.no_grad():
        base = ours(**transformer_inputs(), return_dict=False)[0]
        state_dict, metadata = Krea2Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
        Krea2Pipeline.load_lora_into_transformer(state_dict, stock, adapter_name="style", metadata=metadata)
        stock.set_adapters(["style"], [0.7])
        expected = stock(**transformer_inputs(), return_dict=False)[0]
        library = LoraLibrary(lora_dir)
        weights = library.weights(library.get("reference"), target_shapes(ours))
        LoraPatcher(ours).fold([(weights, 0.7)])
        got = ours(**transformer_inputs(), return_dict=False)[0]
    assert (expected - base).abs().mean() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fused_projections_take_the_lora_in_their_rows():
    """The fast path fuses q/k/v/gate and gate/up: each module's update lands in its own rows of the fused layer."""
    plain, fused = build_transformer(seed=3).eval(), build_transformer(seed=3).eval()
    fuse_projections(fused)
    install_fast_attention(fused)
    targets = lora_targets(fused)
    assert targets["transformer_blocks.0.attn.to_k"].layer == "transformer_blocks.0.attn.to_qkvg"
    assert target_shapes(fused) == target_shapes(plain)  # LoRAs are checked against the same modules either way
    from krea2.lora_weights import LoraFactors, LoraWeights

    factors = random_factors(plain)
    weights = LoraWeights("x", "0" * 64, "diffusers", {m: LoraFactors(d, u, 2.0) for m, (d, u) in factors.items()})
    with torch.no_grad():
        for transformer in (plain, fused):
            LoraPatcher(transformer).fold([(weights, 0.9)])
        expected = plain(**transformer_inputs(), return_dict=False)[0]
        got = fused(**transformer_inputs(), return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fp8_weights_are_requantised_in_place_from_their_bf16_master():
    """fp8 + LoRA is the fp8 quantisation of bf16 + LoRA, written into the same tensors; no LoRA restores the
    original fp8 values bit for bit. (torchao's quantize_ needs a GPU; the same weight tensors are built directly.)"""
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor, QuantizeTensorToFloat8Kwargs

    from krea2.lora_weights import LoraFactors, LoraWeights

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
    patcher = LoraPatcher(layer, pin_memory=False)
    patcher.keep_masters(["0"])
    master = layer[0].weight.detach().clone()

    def quantised(weight):
        return Float8Tensor.from_hp(weight, granularity=PerRow(), act_quant_kwargs=QuantizeTensorToFloat8Kwargs())

    layer[0].weight = torch.nn.Parameter(quantised(master), requires_grad=False)
    original = layer[0].weight.qdata.clone(), layer[0].weight.scale.clone()
    address = layer[0].weight.qdata.data_ptr()
    down, up = torch.randn(4, 64) * 0.1, torch.randn(32, 4) * 0.1
    patcher.fold([(LoraWeights("x", "0" * 64, "diffusers", {"0": LoraFactors(down, up, 2.0)}), 0.5)])
    expected = quantised((master.float() + 0.5 * 2.0 * up @ down).to(torch.bfloat16))
    assert torch.equal(layer[0].weight.qdata.view(torch.uint8), expected.qdata.view(torch.uint8))
    assert torch.equal(layer[0].weight.scale, expected.scale) and layer[0].weight.qdata.data_ptr() == address
    patcher.fold([])
    assert torch.equal(layer[0].weight.qdata.view(torch.uint8), original[0].view(torch.uint8))
    assert torch.equal(layer[0].weight.scale, original[1])


def test_fp8_weights_without_a_master_refuse_loras():
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    from krea2.lora_weights import LoraFactors, LoraWeights

    layer = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)).to(torch.bfloat16)
    layer[0].weight = torch.nn.Parameter(Float8Tensor.from_hp(layer[0].weight.detach(), granularity=PerRow()))
    weights = LoraWeights("ink", "0" * 64, "diffusers", {"0": LoraFactors(torch.ones(1, 64), torch.ones(32, 1), 1.0)})
    with pytest.raises(LoraError, match="quantised to fp8 without a bf16 copy"):
        LoraPatcher(layer, pin_memory=False).fold([(weights, 1.0)])


def test_changing_loras_recompiles_nothing_while_peft_adapters_would(lora_dir):
    """The compiled blocks see the same modules, shapes and tensors after any LoRA change (torch.compile's guards are
    what decides a recompile; the CPU's eager backend runs the very same guards). diffusers' own adapters, added to
    the compiled transformer, change its modules: a recompile, which is why LoRAs are folded."""
    first = write_lora(lora_dir / "compile-a.safetensors", random_factors(build_transformer(), seed=1), "kohya")
    second = write_lora(lora_dir / "compile-b.safetensors", random_factors(build_transformer(), seed=2), "krea")
    transformer = build_transformer(seed=3).eval()
    library = LoraLibrary(lora_dir)
    a, b = (library.weights(library.get(path.stem), target_shapes(transformer)) for path in (first, second))
    torch._dynamo.reset()
    transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    patcher = patcher_of(transformer, create=True)
    with torch.no_grad():
        outputs = [transformer(**transformer_inputs(), return_dict=False)[0]]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for loras in ([(a, 1.0)], [(a, 0.5), (b, -1.0)], [(b, 2.0)], []):
                patcher.fold(loras)
                outputs.append(transformer(**transformer_inputs(), return_dict=False)[0])
            assert not torch.equal(outputs[1], outputs[0]) and not torch.equal(outputs[2], outputs[1])
            assert torch.equal(outputs[-1], outputs[0])
            peft = {f"transformer.{m}.lora_{ab}.weight": t for m, f in a.modules.items()
                    for ab, t in (("A", f.down), ("B", f.up))}  # fmt: skip
            transformer.load_lora_adapter(peft, adapter_name="peft", prefix="transformer")
            with pytest.raises(torch._dynamo.exc.RecompileError):
                transformer(**transformer_inputs(), return_dict=False)
    torch._dynamo.reset()


def test_a_missing_lora_or_no_library_is_a_sentence(lora_manager, manager):
    with pytest.raises(LoraError, match="no LoRA named nowhere in the LoRA folder"):
        draw(lora_manager, loras=["nowhere:1"])
    with pytest.raises(LoraError, match="no LoRA folder"):
        draw(manager, loras=["anything:1"])
    with pytest.raises(InvalidRequest, match="must be in the LoRA folder, and nowhere is not"):
        lora_manager.lora_files(GenerationRequest(prompt="x", loras=["nowhere:1"]))
    with pytest.raises(InvalidRequest, match="must be empty: this app has no LoRA folder"):
        manager.lora_files(GenerationRequest(prompt="x", loras=["anything:1"]))


def test_a_lora_that_overflows_is_named_when_the_image_comes_out_nan(lora_manager, lora_dir):
    """A hostile pass: a LoRA of finite but huge values (the demo LoRA times 1e30) passes every check, overflows once
    applied, and the error blamed the seed. It names the LoRA now; the checkpoint's weights come back unharmed."""
    from krea2.errors import NonFiniteImage

    factors = random_factors(lora_manager.pipes["turbo"].transformer)
    huge = {module: (down * 1e18, up * 1e18) for module, (down, up) in factors.items()}
    path = write_lora(lora_dir / "overflowing.safetensors", huge, "diffusers")
    try:  # the folder is the session's: other tests list it
        base, _ = draw(lora_manager)
        with pytest.raises(NonFiniteImage, match=rf"^The model produced NaN values with the LoRA {path.stem}; no "):
            draw(lora_manager, loras=[f"{path.stem}:0.5"])
        assert np.array_equal(draw(lora_manager)[0], base)
    finally:
        path.unlink()


def test_a_lora_found_by_its_last_name_part_alone_is_said(lora_manager, lora_dir, style):
    """A hostile pass deleted `pixel-style.safetensors` from the folder: the next run with `pixel-style:1` quietly used
    `demo/pixel-style`, another file. Taking the only LoRA of that last name part (A1111's way) is kept, and said."""
    import shutil

    path = lora_dir / "elsewhere" / "lonely.safetensors"
    path.parent.mkdir()
    shutil.copy(lora_dir / f"{style['kohya']}.safetensors", path)
    try:
        _, result = draw(lora_manager, loras=["lonely:1"])
        assert result.warnings == ["LoRA lonely was taken to be elsewhere/lonely (the only LoRA of that name)."]
        assert [lora.name for lora in result.loras] == ["elsewhere/lonely"]
        assert draw(lora_manager, loras=[f"{style['kohya']}:1"])[1].warnings == []
    finally:
        shutil.rmtree(path.parent)
