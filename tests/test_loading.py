"""Loading goes through from_pretrained on saved demo folders in the real repos' layout."""

from pathlib import Path

import pytest
import torch

from krea2 import RAW, TURBO, LoadError
from krea2.loading import PipelineLoader, explain_load_error


def test_demo_folders_have_the_real_layout(demo_sources):
    turbo, raw = Path(demo_sources["turbo"]), Path(demo_sources["raw"])
    assert (turbo / "model_index.json").is_file()
    for part in ("scheduler", "text_encoder", "tokenizer", "transformer", "vae"):
        assert (turbo / part).is_dir()
    assert (raw / "transformer" / "config.json").is_file()
    assert not (raw / "model_index.json").exists()  # Raw ships only its transformer, like krea/Krea-2-Raw


def test_raw_and_turbo_share_encoder_and_vae_objects(manager):
    raw, turbo = manager.pipes["raw"], manager.pipes["turbo"]
    assert raw.text_encoder is turbo.text_encoder
    assert raw.vae is turbo.vae
    assert raw.tokenizer is turbo.tokenizer
    assert raw.transformer is not turbo.transformer
    assert raw.scheduler is not turbo.scheduler  # schedulers are stateful
    assert (raw.config.is_distilled, turbo.config.is_distilled) == (RAW.is_distilled, TURBO.is_distilled)


def test_template_lengths_come_from_the_loaded_tokenizer(manager):
    from krea2.loading import derive_prompt_template_lengths

    pipe = manager.pipes["turbo"]
    prefix = len(pipe.tokenizer(pipe.prompt_template_encode_prefix).input_ids)
    suffix = len(pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids)
    assert (pipe.prompt_template_encode_start_idx, pipe.prompt_template_encode_num_suffix_tokens) == (prefix, suffix)
    # (The demo tokenizer happens to give the Qwen tokenizer's 34 and 5: the lengths must follow the tokenizer.)
    longer = pipe.prompt_template_encode_prefix
    try:
        pipe.prompt_template_encode_prefix = longer + "And more words."
        derive_prompt_template_lengths(pipe)
        expected = len(pipe.tokenizer(longer + "And more words.").input_ids)
        assert pipe.prompt_template_encode_start_idx == expected > prefix
    finally:
        pipe.prompt_template_encode_prefix = longer
        derive_prompt_template_lengths(pipe)


def test_missing_folder_is_one_clear_line(tmp_path):
    loader = PipelineLoader({"turbo": str(tmp_path / "nope"), "raw": str(tmp_path)}, torch.float32)
    with pytest.raises(LoadError, match="does not exist"):
        loader.load_full(TURBO)


def test_wrong_layout_is_one_clear_line(tmp_path, demo_sources):
    loader = PipelineLoader({"turbo": str(tmp_path), "raw": str(tmp_path)}, torch.float32)
    with pytest.raises(LoadError, match=r"missing model_index\.json"):
        loader.load_full(TURBO)
    with pytest.raises(LoadError, match=r"missing transformer/config\.json"):
        loader.load_transformer(RAW)


def test_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    loader = PipelineLoader({"turbo": "krea/Krea-2-Turbo", "raw": "krea/Krea-2-Raw"}, torch.float32)
    with pytest.raises(LoadError) as caught:
        loader.load_full(TURBO)
    assert "not in the local Hub cache" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_gated_repo_message_says_how_to_get_access():
    from huggingface_hub.errors import GatedRepoError

    try:
        try:
            import httpx

            response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/krea/Krea-2-Turbo"))
            raise GatedRepoError("Access to model krea/Krea-2-Turbo is restricted.", response=response)
        except GatedRepoError as inner:
            raise OSError("Cannot load") from inner
    except OSError as outer:
        message = str(explain_load_error(outer, "krea/Krea-2-Turbo", TURBO))
    assert "accept the krea 2 license" in message.lower() and "HF_TOKEN" in message
