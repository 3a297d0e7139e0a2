"""LoRAs on the fast path on a CUDA GPU, at Krea 2's real width (3 full-size blocks, random weights, as
tests/gpu/test_gpu_fast_path.py builds them). Skipped without CUDA. Run on the GPU machine:

    .venv/bin/python -m pytest -m gpu tests/gpu -q

What it asserts (issue 16): with fused projections + fp8 + compile + the denoiser's CUDA graphs, folding a LoRA in,
switching to another set and back to none recompiles nothing and recaptures nothing, the compiled replay reads the new
weights (fp8 + LoRA matches bf16 + LoRA within fp8's tolerance, and the LoRA's effect is far larger than that), no
LoRA restores the original fp8 weights bit for bit; offloaded weights take LoRAs through the CPU copies the offloading
streams from; and through the manager, a generation with a LoRA file and one without it after compile warm-up compile
nothing, the second the same image as one made before any LoRA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_gpu_fast_path import (
    CUDA,
    FP8_TOLERANCE,
    attention_kernel,
    build_text_encoder,
    build_transformer,
    fp8_unavailable_reason,
    pipeline,
    transformer_inputs,
    velocity,
)

from bench.benchmark import InMemoryLoader
from krea2 import GenerationRequest
from krea2.lora_fold import LoraPatcher, patcher_of, target_shapes
from krea2.lora_weights import LoraFactors, LoraWeights
from krea2.manager import ModelManager
from krea2.speedups import FastPathOptions, apply
from krea2.speedups.cuda_graphs import relative_l2
from krea2.speedups.denoiser_graphs import denoiser_graphs_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
]

RANK = 32
LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate", "attn.to_out.0", "ff.gate", "ff.up", "ff.down")
# Each update's norm against its weight's. On random weights a block's output is a small part of the residual stream,
# and fp8's error on the 3-block velocity (0.0044 relative L2, H200, 2026-12-02) is what an update of ~0.2 does
# (0.3 -> 0.0074, 0.5 -> 0.0112): 1.0 makes the LoRA's effect ~5x fp8's error, so its change can be checked.
RELATIVE_UPDATE = 1.0


def random_lora(transformer, seed: int, name: str) -> LoraWeights:
    """A rank-32 update of every linear layer of the blocks, scaled to RELATIVE_UPDATE of each weight."""
    generator = torch.Generator(CUDA).manual_seed(seed)
    layers = dict(transformer.named_modules())
    modules = {}
    for index in range(len(transformer.transformer_blocks)):
        for layer in LAYERS:
            module = f"transformer_blocks.{index}.{layer}"
            weight = layers[module].weight.float()
            down = torch.randn(RANK, weight.shape[1], generator=generator, device=CUDA)
            up = torch.randn(weight.shape[0], RANK, generator=generator, device=CUDA)
            scale = RELATIVE_UPDATE * float(weight.norm() / (up @ down).norm())
            modules[module] = LoraFactors(down.to(torch.bfloat16), up.to(torch.bfloat16), scale)
    return LoraWeights(name, f"{seed:064x}", "diffusers", modules)


def test_a_lora_switch_on_the_compiled_fp8_path_recompiles_nothing_and_matches_bf16():
    if reason := fp8_unavailable_reason():
        pytest.skip(reason)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    reference, transformer = build_transformer(seed=11), build_transformer(seed=11)  # the same weights twice
    lora_a, lora_b = random_lora(reference, 1, "a"), random_lora(reference, 2, "b")
    inputs = transformer_inputs()
    plain = velocity(reference, inputs)
    LoraPatcher(reference).fold([(lora_a, 0.8)])
    bf16_lora = velocity(reference, inputs)  # bf16 + LoRA, eager: the reference

    pipe = pipeline(transformer)
    options = FastPathOptions(compile=True, fp8=True, attention=attention_kernel(), denoiser_graphs=True,
                              lora_masters=True)  # fmt: skip
    apply([pipe], options, placement="gpu", device=CUDA)
    patcher = patcher_of(transformer)
    assert patcher is not None and patcher.masters, "the fast path keeps bf16 masters for LoRAs"
    original = {layer: (w.qdata.clone(), w.scale.clone()) for layer in patcher.masters
                if hasattr(w := transformer.get_submodule(layer).weight, "qdata")}  # fmt: skip
    assert original, "fp8 layers"
    with torch.inference_mode():
        for seed in (3, 4, 5):  # eager (compiles), captured, replayed
            transformer(**transformer_inputs(seed), return_dict=False)
    graphs = denoiser_graphs_of(transformer)
    assert graphs is not None and graphs.disabled_reason is None and len(graphs.graphs) == 1
    fp8_plain = velocity(transformer, inputs)
    compiled, captures = counters["stats"]["unique_graphs"], graphs.graphs.misses

    with torch._dynamo.config.patch(error_on_recompile=True):
        patcher.fold([(lora_a, 0.8)])
        fp8_lora = velocity(transformer, inputs)  # a replay: it must read the new weights
        with torch.inference_mode():  # the compiled blocks themselves, outside the graph: their guards must hold
            compiled_lora = graphs.eager(**inputs, return_dict=False)[0].float()
        patcher.fold([(lora_b, 0.5), (lora_a, -0.3)])
        velocity(transformer, inputs)
        patcher.fold([])
        fp8_back = velocity(transformer, inputs)
    assert counters["stats"]["unique_graphs"] == compiled and graphs.graphs.misses == captures
    assert relative_l2(fp8_lora, compiled_lora) < 1e-3  # the replay and the compiled call agree

    effect, fp8_error = relative_l2(bf16_lora, plain), relative_l2(fp8_plain, plain)
    assert effect > 3 * fp8_error, f"the LoRA's effect ({effect:.4f}) must dwarf fp8's own error ({fp8_error:.4f})"
    error = relative_l2(fp8_lora, bf16_lora)
    assert error < FP8_TOLERANCE, f"fp8 + LoRA against bf16 + LoRA: relative L2 {error:.4f}"
    # The change the LoRA makes, on fp8 against bf16: the same change, up to fp8's error on both sides of it (~0.3
    # expected at 5x); no change at all (stale weights) gives 1.0, the wrong sign 2.0, twice the weight 1.0.
    change_error = relative_l2(fp8_lora - fp8_plain, bf16_lora - plain)
    assert change_error < 0.5, f"the LoRA's change on fp8 against on bf16: relative L2 {change_error:.3f}"
    assert torch.equal(fp8_back, fp8_plain)  # no LoRA: the original fp8 weights, bit for bit
    for layer, (qdata, scale) in original.items():
        weight = transformer.get_submodule(layer).weight
        assert torch.equal(weight.qdata.view(torch.uint8), qdata.view(torch.uint8)) and torch.equal(weight.scale, scale)
    torch._dynamo.reset()


def test_offloaded_weights_take_loras_through_their_cpu_copies():
    """Group offloading streams each layer from a pinned CPU copy: the fold must write there, before and after the
    first call."""
    from krea2.placement import apply_placement

    reference = build_transformer(seed=12)
    lora = random_lora(reference, 3, "offload")
    inputs = transformer_inputs()
    plain = velocity(reference, inputs)
    LoraPatcher(reference).fold([(lora, 1.0)])
    expected = velocity(reference, inputs)

    offloaded = build_transformer(seed=12).to("cpu")
    apply_placement([offloaded], "offload", CUDA)
    patcher = LoraPatcher(offloaded)
    patcher.fold([(lora, 1.0)])  # before the first call
    first = velocity(offloaded, inputs)
    patcher.fold([])
    back = velocity(offloaded, inputs)
    patcher.fold([(lora, 1.0)])  # after calls: the layers are offloaded again
    again = velocity(offloaded, inputs)
    for got, want in ((first, expected), (back, plain), (again, expected)):
        assert relative_l2(got, want) < 1e-2  # bf16 on both sides; only where the weights wait differs
    assert target_shapes(offloaded) == target_shapes(reference)


def test_the_manager_with_a_lora_file_compiles_nothing_after_warm_up(tmp_path):
    """The app's path: the fast path on both checkpoints, warmed up; a Turbo image, one with a LoRA from the LoRA
    folder, one without again. No compile after the warm-up; the last image is the first, pixel for pixel."""
    if reason := fp8_unavailable_reason():
        pytest.skip(reason)
    from diffusers import AutoencoderKLQwenImage
    from safetensors.torch import save_file
    from torch._dynamo.utils import counters

    from krea2.lora_library import LoraLibrary

    torch._dynamo.reset()
    turbo_transformer = build_transformer(seed=13)
    with torch.device(CUDA):
        vae = AutoencoderKLQwenImage().to(torch.bfloat16).eval()
    lora = random_lora(turbo_transformer, 4, "style")
    tensors = {}
    for module, factors in lora.modules.items():
        tensors[f"transformer.{module}.lora_A.weight"] = factors.down.cpu()
        tensors[f"transformer.{module}.lora_B.weight"] = (factors.up.float() * factors.scale).to(torch.bfloat16).cpu()
    (tmp_path / "loras").mkdir()
    save_file(tensors, tmp_path / "loras" / "style.safetensors")
    turbo = pipeline(turbo_transformer, build_text_encoder(), vae)
    options = FastPathOptions(compile=True, fp8=True, attention=attention_kernel(), text_graphs=True,
                              denoiser_graphs=True, lora_masters=True)  # fmt: skip
    manager = ModelManager(InMemoryLoader(turbo, build_transformer(seed=14)), placement="gpu", device=str(CUDA),
                           loras=LoraLibrary(tmp_path / "loras"), options=options)  # fmt: skip
    manager.start(background=False)
    manager.warm_up(sizes=((512, 512),), steps=2, batch_sizes=(1,))
    request = GenerationRequest(prompt="a red fox in fresh snow", steps=4, width=512, height=512, seed=7)
    before = np.asarray(manager.generate(request).images[0], dtype=np.int16)
    compiled = counters["stats"]["unique_graphs"]
    with_lora = manager.generate(GenerationRequest(**{**request.to_dict(), "loras": ["style:1"]}))
    after = np.asarray(manager.generate(request).images[0], dtype=np.int16)
    assert counters["stats"]["unique_graphs"] == compiled, "a LoRA change recompiled"
    assert with_lora.loras[0].name == "style" and manager.load_count == 2
    # The LoRA changes the picture (0.37 levels on average at a relative update of 0.3 on the H200; random weights
    # keep a block's effect small), and none gives back the first picture.
    assert np.abs(np.asarray(with_lora.images[0], dtype=np.int16) - before).mean() > 0.25
    assert np.abs(after - before).max() <= 1  # the checkpoint's weights again (bit for bit: test above)
    torch._dynamo.reset()
