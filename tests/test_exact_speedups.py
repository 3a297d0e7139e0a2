"""Exact speed-ups of the shared components, each against the stock computation: the single-frame VAE decode (eager
and compiled) and the text encoder's padded CUDA-graph path (its padding and checks; the capture itself needs a GPU)."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

import krea2.speedups.vae_decode as vae_decode
from krea2.demo import build_vae
from krea2.generation import MAX_SEQUENCE_LENGTH
from krea2.speedups.text_graphs import TextEncoderGraphs, _Captured, text_features
from krea2.speedups.vae_decode import (
    SingleFrameCausalConv3d,
    SingleFrameQwenImageVAE,
    upsample_nearest_2x,
    use_single_frame_decode,
    use_single_frame_encode,
)


@pytest.mark.parametrize("frames", [1, 5])  # an init image; a video, whose cached frames take the stock encoder
def test_single_frame_encode_matches_stock(frames, monkeypatch):
    vae = build_vae().eval()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, frames, 96, 80) * 2 - 1
    calls = []
    original = vae_decode.FrameEncoder.__call__
    monkeypatch.setattr(vae_decode.FrameEncoder, "__call__", lambda *args: calls.append(1) or original(*args))
    with torch.no_grad():
        reference = vae.encode(pixels).latent_dist.mode()
        switched = use_single_frame_encode(vae)
        fast = vae.encode(pixels).latent_dist.mode()
    assert switched > 0 and isinstance(vae.encoder.conv_in, SingleFrameCausalConv3d)
    assert isinstance(vae, SingleFrameQwenImageVAE) and len(calls) == (frames == 1)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert use_single_frame_encode(vae, False) == switched and type(vae.encoder.conv_in) is QwenImageCausalConv3d
    assert type(vae) is AutoencoderKLQwenImage  # no frame path left: stock again


def test_frame_attention_gives_sdpa_token_major_inputs_whatever_the_layout(monkeypatch):
    """SDPA's flash kernels (the CPU's too) need each token's features side by side; a feature-major view sends it to
    the math kernel, which holds tokens² scores at once: a 12-megapixel photo's encode asked for 9 GiB and a 2048² one
    for 16 GiB (the process was killed). An NCHW input (what the encoder's first layers may give) is copied once."""
    block = build_vae().eval().encoder.mid_block.attentions[0]
    seen = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(vae_decode.F, "scaled_dot_product_attention",
                        lambda q, k, v, *a, **kw: seen.append(q.stride(-1)) or original(q, k, v, *a, **kw))  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(1, block.norm.gamma.shape[0], 24, 20)
    with torch.no_grad():
        nchw = vae_decode.FrameBlocks().attention(block, x.contiguous())
        channels_last = vae_decode.FrameBlocks().attention(block, x.contiguous(memory_format=torch.channels_last))
    assert seen == [1, 1]
    torch.testing.assert_close(nchw, channels_last)


def test_compiled_frame_encode_matches_stock_and_shares_the_decoders_kernels():
    """img2img's encode on the fast path: the decoder's fused kernels (torch.compile's CPU backend here)."""
    vae = build_vae().eval()
    torch.manual_seed(0)
    use_single_frame_decode(vae, compiled=True)
    with torch.no_grad():
        for shape in ((1, 3, 1, 96, 80), (2, 3, 1, 64, 64)):  # two shapes: the second runs the dynamic kernels
            pixels = torch.rand(shape) * 2 - 1
            use_single_frame_encode(vae, False)
            reference = vae.encode(pixels).latent_dist.mode()
            use_single_frame_encode(vae, compiled=True)
            assert vae.frame_encoder.ops is vae.frame_decoder.ops
            torch.testing.assert_close(vae.encode(pixels).latent_dist.mode(), reference, rtol=1e-5, atol=1e-5)
    assert vae_decode.single_frame_decode_of(vae) == "compiled"  # switching the encoder left the decoder alone


def conv_input_layouts(monkeypatch) -> list[bool]:
    """Whether each frame convolution from now on reads a channels_last input, in order."""
    layouts: list[bool] = []
    original = vae_decode.frame_conv

    def recording(conv, image, with_bias=True):
        layouts.append(image.is_contiguous(memory_format=torch.channels_last))
        return original(conv, image, with_bias)

    monkeypatch.setattr(vae_decode, "frame_conv", recording)
    return layouts


def test_frame_encoder_runs_on_channels_last_activations_and_hooks_take_the_stock_path(monkeypatch):
    vae = build_vae().eval()
    layouts = conv_input_layouts(monkeypatch)
    use_single_frame_encode(vae)
    pixels = torch.rand(1, 3, 1, 64, 64)
    with torch.no_grad():
        vae.encode(pixels)
        assert len(layouts) > 10 and all(layouts)
        calls, layouts[:] = [], []
        vae.encoder.conv_out.register_forward_hook(lambda *_: calls.append(1))
        vae.encode(pixels)
    assert calls == [1] and layouts and not any(layouts)  # a hook (offloading's) must run: the stock path


@pytest.mark.parametrize("frames", [1, 3])  # one image; a video latent, which takes the stock decoder
def test_single_frame_decode_matches_stock(frames):
    vae = build_vae().eval()
    torch.manual_seed(0)
    latents = torch.randn(2, 16, frames, 12, 10)
    with torch.no_grad():
        reference = vae.decode(latents).sample
        switched = use_single_frame_decode(vae)
        fast = vae.decode(latents).sample
    assert switched > 0 and isinstance(vae.decoder.conv_in, SingleFrameCausalConv3d)
    assert isinstance(vae, SingleFrameQwenImageVAE)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_compiled_frame_decode_matches_stock():
    """The fast path's decode: fused kernels, convolution biases folded into them (torch.compile's CPU backend here)."""
    vae = build_vae().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in ((1, 16, 1, 12, 10), (2, 16, 1, 8, 8)):  # two shapes: the second runs the dynamic kernels
            latents = torch.randn(shape)
            use_single_frame_decode(vae, False)
            reference = vae.decode(latents).sample
            use_single_frame_decode(vae, compiled=True)
            assert vae.frame_decoder.ops.bias_add is not None
            torch.testing.assert_close(vae.decode(latents).sample, reference, rtol=1e-5, atol=1e-5)


def test_frame_decoder_runs_on_channels_last_activations(monkeypatch):
    vae = build_vae().eval()
    layouts = conv_input_layouts(monkeypatch)
    use_single_frame_decode(vae)
    with torch.no_grad():
        vae.decode(torch.randn(1, 16, 1, 8, 8))
    assert len(layouts) > 10 and all(layouts[1:])  # all but post_quant_conv, which reads the latents as given


def test_a_hooked_decoder_takes_the_stock_path():
    """The frame decoder reads weights directly; a module's forward hooks must still run."""
    vae = build_vae().eval()
    use_single_frame_decode(vae)
    calls = []
    vae.decoder.conv_out.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        vae.decode(torch.randn(1, 16, 1, 8, 8))
    assert calls == [1]


def test_group_offloaded_decoder_decodes_through_its_hooks():
    """The offload placement's group offloading loads each module's weights in a hook (CPU to CPU here)."""
    from diffusers.hooks import apply_group_offloading

    vae = build_vae().eval()
    latents = torch.randn(1, 16, 1, 8, 8)
    with torch.no_grad():
        reference = vae.decode(latents).sample
        use_single_frame_decode(vae)
        cpu = torch.device("cpu")
        apply_group_offloading(vae, onload_device=cpu, offload_device=cpu, offload_type="leaf_level")
        assert vae_decode.hooked(vae.post_quant_conv, vae.decoder)
        torch.testing.assert_close(vae.decode(latents).sample, reference, rtol=1e-5, atol=1e-5)


def test_single_frame_decode_switches_back_and_leaves_the_encoder():
    vae = build_vae().eval()
    use_single_frame_decode(vae)
    assert type(vae.encoder.conv_in) is QwenImageCausalConv3d  # encoding is not single-frame-only: untouched
    assert use_single_frame_decode(vae) == 0  # already switched
    use_single_frame_decode(vae, False)
    assert not any(isinstance(m, SingleFrameCausalConv3d) for m in vae.modules())
    assert type(vae) is AutoencoderKLQwenImage


def test_nearest_upsampling_is_one_copy_with_the_same_pixels():
    x = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last)
    up = upsample_nearest_2x(x)
    assert torch.equal(up, F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))
    assert up.is_contiguous(memory_format=torch.channels_last)


def test_chunked_attention_matches_sdpa_for_the_vaes_head_dim(monkeypatch):
    monkeypatch.setattr(vae_decode, "SCORES_PER_CHUNK", 300 * 64)  # five query chunks
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 300, 3 * 384).split(384, dim=-1)  # strided views, as the decoder slices them
    reference = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    torch.testing.assert_close(vae_decode.chunked_attention(q, k, v), reference, rtol=1e-5, atol=1e-5)


def test_manager_decodes_single_frame(manager):
    assert isinstance(manager.pipes["raw"].vae.decoder.conv_out, SingleFrameCausalConv3d)
    assert isinstance(manager.pipes["raw"].vae, SingleFrameQwenImageVAE)


def encoder_and_ids(manager, prompt: str):
    pipe = manager.pipes["turbo"]
    ids = pipe.tokenizer(pipe.prompt_template_encode_prefix + prompt, return_tensors="pt").input_ids
    return pipe, ids.to(pipe.text_encoder.device)  # a GPU run of the tests captures real CUDA graphs


@pytest.mark.parametrize("prompt", ["a fox", "a long prompt " * 12])
def test_right_padding_leaves_the_prompt_features_unchanged(manager, prompt):
    pipe, ids = encoder_and_ids(manager, prompt)
    graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=16, pad_id=3)
    with torch.inference_mode():
        reference = text_features(pipe.text_encoder, ids, pipe.text_encoder_select_layers)
        padded = graphs(ids)
    assert graphs.padded_length(ids.shape[1]) > ids.shape[1] and graphs.disabled_reason is None
    assert padded.shape == reference.shape
    torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-5)


def test_each_call_returns_its_own_tensor(manager):
    """The static output is rewritten by the next call; what a caller got (and cached) must not change with it."""
    pipe, first_ids = encoder_and_ids(manager, "a fox")
    _, second_ids = encoder_and_ids(manager, "a cat")
    _, third_ids = encoder_and_ids(manager, "a dog")
    graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=64)
    with torch.inference_mode():
        results = [graphs(first_ids)]  # captures
        kept = [results[0].clone()]
        for ids in (second_ids, third_ids):  # replays: each rewrites the static output
            results.append(graphs(ids))
            kept.append(results[-1].clone())
    assert len(graphs.captured) == 1  # all prompts fall in the same bucket
    for result, copy in zip(results, kept, strict=True):
        torch.testing.assert_close(result, copy, rtol=0, atol=0)


def test_paused_graphs_capture_nothing_new_and_still_replay_what_they_have(manager):
    """While the manager compiles beside requests, no thread captures (a capture beside another thread's GPU work is
    not safe); a length captured before still replays, a new one is encoded eagerly, to the same features."""
    pipe, short_ids = encoder_and_ids(manager, "a fox")
    _, long_ids = encoder_and_ids(manager, "a long prompt " * 12)
    graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=16)
    with torch.inference_mode():
        graphs(short_ids)
        graphs.paused = True
        replayed, eager = graphs(short_ids), graphs(long_ids)
        reference = text_features(pipe.text_encoder, long_ids, pipe.text_encoder_select_layers)
    assert list(graphs.captured) == [graphs.padded_length(short_ids.shape[1])]
    assert replayed.shape[1] == short_ids.shape[1]
    torch.testing.assert_close(eager, reference, rtol=0, atol=0)


def test_pipeline_with_graphs_gives_the_same_embeddings(manager):
    pipe = manager.pipes["turbo"]
    with torch.inference_mode():
        reference, _ = pipe.get_text_hidden_states("graphs fox", MAX_SEQUENCE_LENGTH)
        pipe.text_graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=32)
        try:
            ours, _ = pipe.get_text_hidden_states("graphs fox", MAX_SEQUENCE_LENGTH)
        finally:
            pipe.text_graphs = None
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


class _GraphThatWritesNothing:
    def replay(self) -> None:
        pass


@pytest.mark.parametrize("failure", ["raises", "disagrees"])
def test_a_bad_capture_falls_back_to_eager_with_a_reason(manager, monkeypatch, failure):
    pipe, ids = encoder_and_ids(manager, "a fox")
    graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=64)

    def capture(padded, device):
        if failure == "raises":
            raise RuntimeError("operation not permitted when stream is capturing")
        layers = len(pipe.text_encoder_select_layers)
        static = (
            torch.zeros(1, padded, dtype=torch.long, device=device),
            torch.zeros(1, padded, layers, pipe.text_encoder.config.text_config.hidden_size, device=device),
        )
        return _Captured(_GraphThatWritesNothing(), *static)

    monkeypatch.setattr(graphs, "_capture", capture)
    with torch.inference_mode():
        out = graphs(ids)
        reference = text_features(pipe.text_encoder, ids, pipe.text_encoder_select_layers)
    expected = "capture failed" if failure == "raises" else "disagreed with eager"
    assert expected in graphs.disabled_reason and not graphs.captured
    torch.testing.assert_close(out, reference)


def test_a_bucket_captured_under_inference_mode_replays_outside_it(manager):
    """A first call under inference_mode (a benchmark's, a warm-up's) must not leave inference tensors as the static
    buffers: the pipeline's later calls run under no_grad, where writing into those would raise."""
    pipe, ids = encoder_and_ids(manager, "a fox")
    graphs = TextEncoderGraphs(pipe.text_encoder, pipe.text_encoder_select_layers, bucket=16)
    with torch.inference_mode():
        graphs(ids)
    with torch.no_grad():
        again = graphs(ids)
        reference = text_features(pipe.text_encoder, ids, pipe.text_encoder_select_layers)
    torch.testing.assert_close(again, reference, rtol=1e-5, atol=1e-5)
