"""The fast path on a CUDA GPU, at Krea 2's real width: a few full-size transformer blocks (diffusers' class defaults
are the real architecture; 3 of its 28 blocks) and a full-width text encoder (12 of its 36 layers), random weights.
Skipped without CUDA. Run on the GPU machine, in about three minutes on an H200:

    .venv/bin/python -m pytest -m gpu tests/gpu -q

What it asserts: fused projections and fp8 applied, the attention kernel (FlashAttention-4) or, where it cannot run,
its fallback (PyTorch's SDPA through the same processor), the denoiser's and the text encoder's CUDA graphs captured
and then replayed (no Python runs in a replay), the compile warm-up making later prompt lengths compile nothing, and
outputs matching eager within the tolerances below, each taken from a measurement in bench/NOTES.md.
"""

from __future__ import annotations

import pytest
import torch

from bench.benchmark import InMemoryLoader
from krea2 import GenerationRequest
from krea2.checkpoints import RAW, TURBO
from krea2.manager import ModelManager
from krea2.pipeline import Krea2StudioPipeline
from krea2.speedups import FastPathOptions, apply, installed
from krea2.speedups.attention import FLASH4, KERNEL_NAMES, attention_in_use, flash4_unavailable_reason
from krea2.speedups.cuda_graphs import relative_l2
from krea2.speedups.denoiser_graphs import CHECK_TOLERANCE as DENOISER_GRAPH_TOLERANCE
from krea2.speedups.denoiser_graphs import denoiser_graphs_of
from krea2.speedups.text_graphs import CHECK_TOLERANCE as TEXT_GRAPH_TOLERANCE
from krea2.speedups.text_graphs import TextEncoderGraphs, text_features

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
]

BLOCKS = 3  # of Krea 2's 28, each at full width (6144, 48 query / 12 KV heads of 128, SwiGLU 16384)
TEXT_LAYERS = 12  # of the text encoder's 36, at full width (2560); Krea 2 taps 12 layers, so all of these
IMAGE_TOKENS, TEXT_TOKENS = 4096, 64  # a 1024² image, a short prompt
CUDA = torch.device("cuda")

# Tolerances, relative L2 against eager on the same inputs (bench/NOTES.md):
FP8_TOLERANCE = 0.02  # fp8 linear layers: 0.0069-0.0071 for a whole 28-block call (H200, H100)
ATTENTION_TOLERANCE = 0.01  # FlashAttention-4 vs SDPA: 0.001 per attention call (exact attention, other summation)
# compile + attention kernel + CUDA graphs, bf16, on final latents: only summation order differs (exact-mode images
# 0.006 from stock; bf16 order noise reaches 0.02 through the 36-layer text encoder)
EXACT_PATH_TOLERANCE = 0.02


def fp8_unavailable_reason() -> str | None:
    if torch.cuda.get_device_capability() < (8, 9):
        return "fp8 needs compute capability >= 8.9"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed"
    return None


def build_transformer(seed: int):
    """`BLOCKS` full-size Krea 2 blocks with the real embeddings, text fusion and final layer, bf16 on the GPU, with
    fp32 where from_pretrained keeps it."""
    from diffusers import Krea2Transformer2DModel

    torch.manual_seed(seed)
    with torch.device(CUDA):
        model = Krea2Transformer2DModel(num_layers=BLOCKS).to(torch.bfloat16)
    for name, module in model.named_modules():
        if name.split(".")[-1] in Krea2Transformer2DModel._keep_in_fp32_modules:
            module.float()
    return model.eval()


def build_text_encoder(layers: int = TEXT_LAYERS, seed: int = 0):
    """Qwen3-VL-4B's text model at full width with fewer layers (the vision tower never runs for text-to-image)."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    text_config = {
        "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": layers, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 5_000_000,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    }  # fmt: skip
    vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 2560}
    torch.manual_seed(seed)
    with torch.device(CUDA):
        return Qwen3VLModel(Qwen3VLConfig(text_config=text_config, vision_config=vision)).to(torch.bfloat16).eval()


def pipeline(transformer, text_encoder=None, vae=None, *, is_distilled: bool = True) -> Krea2StudioPipeline:
    """A studio pipeline around `transformer`; the demo's tokenizer and scheduler, and its small VAE and text encoder
    unless full-size ones are given (the tests that call the transformer alone never run them)."""
    from diffusers import Krea2Pipeline

    from krea2 import demo

    tokenizer = demo.build_tokenizer()
    stock = Krea2Pipeline(
        scheduler=demo.build_scheduler(),
        vae=vae if vae is not None else demo.build_vae(),
        text_encoder=text_encoder if text_encoder is not None else demo.build_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
        text_encoder_select_layers=tuple(range(1, TEXT_LAYERS + 1)) if text_encoder is not None else demo.TEXT_LAYERS,
        is_distilled=is_distilled,
    )
    return Krea2StudioPipeline.from_pipeline(stock)


def transformer_inputs(seed: int = 0, text_tokens: int = TEXT_TOKENS) -> dict:
    from diffusers import Krea2Pipeline

    generator = torch.Generator(CUDA).manual_seed(seed)
    side = int(IMAGE_TOKENS**0.5)
    return {
        "hidden_states": torch.randn(1, IMAGE_TOKENS, 64, generator=generator, device=CUDA, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(
            1, text_tokens, 12, 2560, generator=generator, device=CUDA, dtype=torch.bfloat16
        ),
        "timestep": torch.rand(1, generator=generator, device=CUDA, dtype=torch.bfloat16),
        "position_ids": Krea2Pipeline.prepare_position_ids(text_tokens, side, side, CUDA),
    }


def velocity(transformer, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return transformer(**inputs, return_dict=False)[0].float()


def attention_kernel() -> str | None:
    """What the app runs: FlashAttention-4 where its start-up probe passes, else PyTorch's SDPA (None)."""
    return FLASH4 if flash4_unavailable_reason() is None else None


# ------------------------------------------------------------------------------------------------ per speed-up
def test_fused_projections_and_fp8_are_applied_and_match_eager():
    if reason := fp8_unavailable_reason():
        pytest.skip(reason)
    transformer = build_transformer(seed=1)
    inputs = transformer_inputs()
    reference = velocity(transformer, inputs)
    pipe = pipeline(transformer)
    apply([pipe], FastPathOptions(fp8=True, attention=attention_kernel()), placement="gpu", device=CUDA)
    names = installed(pipe)
    assert {"fused projections", "fp8"} <= set(names), names
    block = transformer.transformer_blocks[0]
    assert hasattr(block.attn, "to_qkvg") and not hasattr(block.attn, "to_q")
    assert type(block.attn.to_qkvg.weight).__module__.startswith("torchao")
    error = relative_l2(velocity(transformer, inputs), reference)
    assert error < FP8_TOLERANCE, f"fp8 velocity relative L2 {error:.4f}"


def test_the_attention_kernel_or_its_fallback_matches_stock():
    """FlashAttention-4 where it runs; where it does not, the fast path's processor must fall back to SDPA, and asking
    for FA4 must fail at start-up with its reason, not in a request."""
    transformer = build_transformer(seed=2)
    inputs = transformer_inputs()
    reference = velocity(transformer, inputs)  # the stock processor
    kernel, reason = attention_kernel(), flash4_unavailable_reason()
    pipe = pipeline(transformer)
    apply([pipe], FastPathOptions(attention=kernel), placement="gpu", device=CUDA)
    if reason is None:
        assert attention_in_use(transformer) == KERNEL_NAMES[FLASH4]
        assert KERNEL_NAMES[FLASH4] in installed(pipe)
    else:
        from krea2.speedups.attention import Krea2FastAttnProcessor, install_fast_attention

        with pytest.raises(RuntimeError, match="FlashAttention-4 unavailable"):
            install_fast_attention(transformer, FLASH4)
        install_fast_attention(transformer, None)  # the fallback the fp8 path runs: our processor over SDPA
        assert isinstance(transformer.transformer_blocks[0].attn.processor, Krea2FastAttnProcessor)
        assert attention_in_use(transformer) is None
    error = relative_l2(velocity(transformer, inputs), reference)
    assert error < ATTENTION_TOLERANCE, f"attention ({reason or 'FlashAttention-4'}) relative L2 {error:.5f}"


def test_denoiser_graphs_are_captured_then_replayed():
    """First call of a shape eager, second captured (and checked against eager), later ones replayed: no Python runs in
    a replay, and a replay follows its call's inputs."""
    transformer = build_transformer(seed=3)
    pipe = pipeline(transformer)
    apply([pipe], FastPathOptions(denoiser_graphs=True), placement="gpu", device=CUDA)
    graphs = denoiser_graphs_of(transformer)
    assert graphs is not None and "denoiser CUDA graphs" in installed(pipe)
    block_calls = []
    transformer.transformer_blocks[0].register_forward_hook(lambda *_: block_calls.append(1))
    velocity(transformer, transformer_inputs(0))  # eager
    velocity(transformer, transformer_inputs(1))  # captured
    assert graphs.disabled_reason is None, graphs.disabled_reason
    assert graphs.checked and len(graphs.graphs) == 1
    calls_before = len(block_calls)
    replayed = velocity(transformer, transformer_inputs(2))
    assert len(block_calls) == calls_before  # replayed: the block's Python never ran
    with torch.inference_mode():
        eager = graphs.eager(**transformer_inputs(2), return_dict=False)[0].float()
    error = relative_l2(replayed, eager)
    assert error < DENOISER_GRAPH_TOLERANCE, f"replay relative L2 {error:.2e}"


def test_text_encoder_graphs_are_captured_then_replayed():
    encoder = build_text_encoder(layers=4)
    select = (1, 2, 3, 4)
    graphs = TextEncoderGraphs(encoder, select, bucket=64)
    layer_calls = []
    encoder.language_model.layers[0].register_forward_hook(lambda *_: layer_calls.append(1))
    generator = torch.Generator(CUDA).manual_seed(0)
    first, second = (torch.randint(0, 150_000, (1, n), generator=generator, device=CUDA) for n in (40, 50))
    with torch.inference_mode():
        captured = graphs(first)  # captures the 64-token bucket and checks it against eager
        assert graphs.disabled_reason is None, graphs.disabled_reason
        assert graphs.captured[64].graph is not None
        calls_before = len(layer_calls)
        replayed = graphs(second)  # same bucket: replayed
        assert len(layer_calls) == calls_before
        for ids, features in ((first, captured), (second, replayed)):
            error = relative_l2(features, text_features(encoder, ids, select))
            assert error < TEXT_GRAPH_TOLERANCE, f"text graph relative L2 {error:.4f}"


# ------------------------------------------------------------------------------------------------ the app's path
def final_latents(manager: ModelManager, request: GenerationRequest) -> torch.Tensor:
    manager.prompt_cache.clear()  # encode again, through whatever the text encoder runs now
    pipe = manager.pipes[request.checkpoint]
    return pipe(
        **manager.pipeline_inputs(request),
        generator=[torch.Generator("cpu").manual_seed(request.seed)],
        output_type="latent",
    ).images.float()


def test_compile_warm_up_then_the_whole_exact_path_matches_eager():
    """Through the manager, as the app runs it: eager first (the reference), then compile + the attention kernel +
    both CUDA graphs put on by `apply`, the warm-up, and a request with a prompt length the warm-up never saw: it must
    compile nothing, and the same request's final latents must match eager's."""
    from diffusers import AutoencoderKLQwenImage
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    with torch.device(CUDA):
        vae = AutoencoderKLQwenImage().to(torch.bfloat16).eval()  # the Qwen-Image VAE's architecture
    turbo = pipeline(build_transformer(seed=4), build_text_encoder(), vae)
    manager = ModelManager(InMemoryLoader(turbo, build_transformer(seed=5)), placement="gpu", device=str(CUDA))
    manager.start(background=False)
    assert all(manager.status().checkpoints[spec.key].state == "ready" for spec in (RAW, TURBO))
    request = GenerationRequest(prompt="a red fox in fresh snow", steps=4, width=512, height=512, seed=7)
    eager = final_latents(manager, request)

    options = FastPathOptions(compile=True, attention=attention_kernel(), text_graphs=True, denoiser_graphs=True)
    manager.apply_fast_path(options)
    assert manager.options == options
    seconds = manager.warm_up(sizes=((512, 512), (512, 384)), steps=2, batch_sizes=(1,))
    assert manager.status().warmup == "ready"
    for key, pipe in manager.pipes.items():
        names = installed(pipe)
        expected = {"single-frame VAE decode and encode (compiled)", "compiled blocks", "denoiser CUDA graphs"}
        expected |= {"text encoder CUDA graphs"} | ({KERNEL_NAMES[FLASH4]} if options.attention else set())
        assert expected <= set(names), (key, names)
        graphs = denoiser_graphs_of(pipe.transformer)
        assert graphs.checked and graphs.disabled_reason is None and len(graphs.graphs) > 0, key

    compiled = counters["stats"]["unique_graphs"]
    other = GenerationRequest(prompt="a lighthouse on a cliff at night, long exposure", width=512, height=512, seed=3)
    result = manager.generate(other)
    assert counters["stats"]["unique_graphs"] == compiled, f"a new prompt length recompiled (warm-up {seconds:.0f} s)"
    assert len(result.images) == 1

    fast = final_latents(manager, request)
    error = relative_l2(fast, eager)
    assert error < EXACT_PATH_TOLERANCE, f"final latents relative L2 {error:.4f}"
