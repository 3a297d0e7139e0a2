"""Raw's optional first-block cache on a tiny real Krea 2 transformer and through the manager."""

import numpy as np
import pytest
import torch
from diffusers import Krea2Pipeline

from krea2 import GenerationRequest
from krea2.demo import TEXT_HIDDEN, TEXT_LAYERS, build_transformer
from krea2.speedups.step_cache import install_step_cache, step_cache_of
from studio.settings import SettingError, load_settings


def call(transformer, hidden, text):
    positions = Krea2Pipeline.prepare_position_ids(text.shape[1], 4, 4, "cpu")
    with torch.no_grad():
        return transformer(
            hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([0.5]), position_ids=positions
        ).sample


def make(seed=0, text_tokens=5):
    torch.manual_seed(seed)
    return torch.randn(1, 16, 64), torch.randn(1, text_tokens, len(TEXT_LAYERS), TEXT_HIDDEN)


def test_threshold_zero_runs_every_block_and_changes_nothing():
    plain, cached = build_transformer(seed=3).eval(), build_transformer(seed=3).eval()
    cache = install_step_cache(cached, threshold=0.0)
    _, text = make()
    for seed in range(3):
        hidden, _ = make(seed)
        torch.testing.assert_close(call(cached, hidden, text), call(plain, hidden, text), rtol=0, atol=0)
    assert (cache.computed, cache.skipped) == (3, 0)


def test_a_skipped_call_reuses_the_last_full_calls_tail_residual():
    transformer = build_transformer(seed=3).eval()
    blocks = list(transformer.transformer_blocks)
    cache = install_step_cache(transformer, threshold=1e9)  # skip whenever there is something to reuse
    hidden, text = make(0)
    first = call(transformer, hidden, text)
    second = call(transformer, hidden * 0.9, text)
    assert (cache.computed, cache.skipped) == (1, 1)
    assert not torch.allclose(first, second)
    # Outside a call the list iterates as the plain blocks (fusion, quantisation and compile see real modules).
    assert list(transformer.transformer_blocks) == blocks


def test_each_guidance_branch_keeps_its_own_cache():
    transformer = build_transformer(seed=3).eval()
    cache = install_step_cache(transformer, threshold=1e9)
    hidden, cond = make(0, text_tokens=5)
    _, uncond = make(1, text_tokens=5)  # same length: only the tensor tells the branches apart
    call(transformer, hidden, cond)
    call(transformer, hidden, uncond)
    assert (cache.computed, cache.skipped) == (2, 0)  # a new branch never reuses another branch's residual
    call(transformer, hidden, cond)
    call(transformer, hidden, uncond)
    assert (cache.computed, cache.skipped) == (2, 2)
    cache.reset()
    call(transformer, hidden, cond)
    assert (cache.computed, cache.skipped) == (1, 0)


def test_manager_raw_with_step_cache(demo_sources):
    from krea2.loading import PipelineLoader
    from krea2.manager import ModelManager
    from krea2.speedups import FastPathOptions

    def manager(threshold):
        options = FastPathOptions(step_cache=threshold)
        mgr = ModelManager(PipelineLoader(demo_sources, torch.float32), options=options, demo=True)
        mgr.start(background=False)
        return mgr

    request = GenerationRequest(
        prompt="cached fox", checkpoint="raw", negative_prompt="blurry", steps=12, seed=4, width=256, height=256
    )
    exact, cached = manager(0.0), manager(1e9)  # 1e9: every call after a branch's first reuses its residual
    assert step_cache_of(cached.pipes["turbo"].transformer) is None  # Turbo's 8 distilled steps: never cached
    assert cached.status().summary().endswith("Krea 2 Raw step cache 1e+09")  # Raw's alone, after the shared ones
    assert exact.status().fast_path == "single-frame VAE decode and encode + Krea 2 Raw step cache 0"
    reference = np.asarray(exact.generate(request).images[0], dtype=np.int16)
    first = np.asarray(cached.generate(request).images[0], dtype=np.int16)
    cache = step_cache_of(cached.pipes["raw"].transformer)
    assert (cache.computed, cache.skipped) == (2, 2 * request.steps - 2)
    # Reset per generation: the same request again gives the same pixels, nothing leaks from the previous image, and
    # the cache holds this image's two branches only.
    assert np.array_equal(np.asarray(cached.generate(request).images[0], dtype=np.int16), first)
    assert len(cache.branches) == 2
    assert 0 < np.abs(first - reference).max() < 255


@pytest.mark.parametrize(("text", "expected"), [(None, None), ("", None), (" 0.05 ", 0.05), ("0", 0.0)])
def test_step_cache_setting(text, expected):
    environ = {} if text is None else {"KREA2_STEP_CACHE": text}
    assert load_settings(environ).step_cache == expected


@pytest.mark.parametrize("text", ["-1", "abc", "nan", "inf"])
def test_bad_step_cache_setting_is_one_clear_error(text):
    with pytest.raises(SettingError, match="KREA2_STEP_CACHE"):
        load_settings({"KREA2_STEP_CACHE": text})
