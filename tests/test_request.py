import math

import pytest

from krea2 import GenerationRequest, InvalidRequest


def test_defaults_follow_the_checkpoint():
    turbo = GenerationRequest(prompt="fox")
    raw = GenerationRequest(prompt="fox", checkpoint="raw")
    assert (turbo.steps, turbo.guidance) == (8, 0.0)
    assert (raw.steps, raw.guidance) == (52, 3.5)
    assert turbo.effective_negative_prompt is None  # guidance 0: negative prompt ignored
    assert GenerationRequest(prompt="a", checkpoint="raw", negative_prompt="blur").effective_negative_prompt == "blur"


def test_browser_values_are_coerced():
    request = GenerationRequest(prompt="  fox  ", steps=8.0, guidance="2.5", width="512", height=512.0, seed="42")
    assert (request.prompt, request.steps, request.guidance, request.width, request.seed) == ("fox", 8, 2.5, 512, 42)
    assert GenerationRequest(prompt="x", seed="").seed is None


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("prompt", "", "must not be empty"),
        ("prompt", "   \n\t", "must not be empty"),
        ("prompt", "x" * 2001, "at most 2000"),
        ("prompt", "a\x00b", "NUL"),
        ("prompt", 12, "must be text"),
        ("negative_prompt", "n" * 2001, "at most 2000"),
        ("checkpoint", "sdxl", "must be one of"),
        ("steps", 0, "between 1 and 100"),
        ("steps", -1, "between 1 and 100"),
        ("steps", 10**9, "between 1 and 100"),
        ("steps", 2.5, "whole number"),
        ("steps", "many", "whole number"),
        ("guidance", math.nan, "finite"),
        ("guidance", math.inf, "finite"),
        ("guidance", -1, "between 0.0 and 20.0"),
        ("guidance", "abc", "must be a number"),
        ("width", 17, "between 256 and 2048"),
        ("width", 0, "between 256 and 2048"),
        ("width", 100000, "between 256 and 2048"),
        ("height", 1000, "multiple of 16"),
        ("seed", -1, "between 0 and 4294967295"),
        ("seed", 2**70, "between 0 and 4294967295"),
        ("seed", "abc", "whole number"),
        ("num_images", 0, "between 1 and 4"),
        ("num_images", 5, "between 1 and 4"),
    ],
)
def test_each_invalid_field_is_named(field, value, needle):
    fields = {"prompt": "a fox", field: value}
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")
    assert needle in str(caught.value)


def test_emoji_prompts_are_fine():
    assert GenerationRequest(prompt="🦊 in ❄️").prompt == "🦊 in ❄️"


def test_with_checkpoint_resets_settings_unless_kept():
    turbo = GenerationRequest(prompt="fox", steps=4, seed=3)
    assert turbo.with_checkpoint("raw").steps == 52
    assert turbo.with_checkpoint("raw", keep_settings=True).steps == 4
    assert turbo.with_checkpoint("raw").seed == 3
    assert turbo.with_checkpoint("raw", steps=20).steps == 20
    with pytest.raises(InvalidRequest, match="steps"):
        turbo.with_checkpoint("raw", steps=0)  # overrides are validated too
