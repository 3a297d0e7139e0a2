"""Exact speed-ups of the shared components, each against the stock computation: single-frame VAE decode and the
text encoder's padded CUDA-graph path (its padding and checks; the capture itself needs a GPU)."""

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

from krea2.demo import _build_vae
from krea2.manager import MAX_SEQUENCE_LENGTH
from krea2.text_graphs import TextEncoderGraphs, _Captured, text_features
from krea2.vae_decode import SingleFrameCausalConv3d, use_single_frame_decode


@pytest.mark.parametrize("frames", [1, 3])  # one image; a video latent, whose later frames take the cached path
def test_single_frame_decode_matches_stock(frames):
    vae = _build_vae().eval()
    torch.manual_seed(0)
    latents = torch.randn(2, 16, frames, 12, 10)
    with torch.no_grad():
        reference = vae.decode(latents).sample
        switched = use_single_frame_decode(vae)
        fast = vae.decode(latents).sample
    assert switched > 0 and isinstance(vae.decoder.conv_in, SingleFrameCausalConv3d)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_single_frame_decode_switches_back_and_leaves_the_encoder():
    vae = _build_vae().eval()
    use_single_frame_decode(vae)
    assert type(vae.encoder.conv_in) is QwenImageCausalConv3d  # encoding is not single-frame-only: untouched
    assert use_single_frame_decode(vae) == 0  # already switched
    use_single_frame_decode(vae, False)
    assert not any(isinstance(m, SingleFrameCausalConv3d) for m in vae.modules())


def test_manager_decodes_single_frame(manager):
    assert isinstance(manager.pipes["raw"].vae.decoder.conv_out, SingleFrameCausalConv3d)


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
            torch.zeros(1, padded, layers, 32, device=device),
        )
        return _Captured(_GraphThatWritesNothing(), *static)

    monkeypatch.setattr(graphs, "_capture", capture)
    with torch.inference_mode():
        out = graphs(ids)
        reference = text_features(pipe.text_encoder, ids, pipe.text_encoder_select_layers)
    expected = "capture failed" if failure == "raises" else "disagreed with eager"
    assert expected in graphs.disabled_reason and not graphs.captured
    torch.testing.assert_close(out, reference)
