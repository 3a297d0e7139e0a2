"""LoRAs as part of the one validated request: what GenerationRequest takes (LoraChoice, "name:weight" text, dicts),
what it refuses and names, which LoRAs a checkpoint runs with, and History's LoRA filter."""

from __future__ import annotations

import pytest

from krea2 import GenerationRequest, InvalidRequest
from krea2.request import HistoryQuery, LoraChoice


def test_every_form_a_client_sends_becomes_the_same_choices():
    expected = (LoraChoice("ink", 0.8), LoraChoice("styles/paper", -0.5, "raw"))
    for loras in (
        [LoraChoice("ink", 0.8), LoraChoice("styles/paper", -0.5, "raw")],
        ["ink:0.8", {"name": "styles/paper", "weight": "-0.5", "target": "raw"}],
        [{"name": "ink.safetensors", "weight": 0.8}, {"name": " styles/paper ", "weight": -0.5, "target": "raw"}],
    ):
        assert GenerationRequest(prompt="x", loras=loras).loras == expected
    assert GenerationRequest(prompt="x", loras="ink:0.8, paper").loras == (LoraChoice("ink", 0.8), LoraChoice("paper"))
    assert GenerationRequest(prompt="x", loras=None).loras == () == GenerationRequest(prompt="x", loras="").loras


def test_a_checkpoint_runs_the_loras_aimed_at_it_and_the_request_round_trips():
    request = GenerationRequest(prompt="x", checkpoint="turbo", loras=["ink:1", {"name": "raw-only", "target": "raw"}])
    assert [c.name for c in request.active_loras] == ["ink"]
    assert [c.name for c in request.with_checkpoint("raw").active_loras] == ["ink", "raw-only"]
    assert request.with_seed(5).loras == request.loras and request.without_loras().loras == ()
    assert request.to_dict()["loras"] == [{"name": "ink", "weight": 1.0, "target": "both"},
                                          {"name": "raw-only", "weight": 1.0, "target": "raw"}]  # fmt: skip


@pytest.mark.parametrize(
    ("loras", "field", "needle"),
    [
        (["ink:2.5"], "lora_weight", "between -2.0 and 2.0"),
        (["ink:nan"], "lora_weight", "finite"),
        (["ink:x"], "lora_weight", "must be a number"),
        ([{"name": "ink", "target": "sdxl"}], "lora_target", "must be one of: both, raw, turbo"),
        (["../../etc/passwd"], "lora_name", "must be a LoRA name"),
        ([{"name": 'a"b'}], "lora_name", "must be a LoRA name"),
        ([{"name": ""}], "lora_name", "must not be empty"),
        ([{"name": "x" * 201}], "lora_name", "at most 200"),
        ([{"name": 5}], "lora_name", "must be text"),
        (["a", "b", "c", "d", "e"], "loras", "at most 4"),
        (["ink:1", "ink:0.5"], "loras", "once per checkpoint"),
        ([{"name": "ink", "scale": 1}], "loras", "only name, weight and target"),
        ([3], "loras", 'must be "name:weight" text'),
        ({"ink": 1}, "loras", "only name, weight and target"),
        (4, "loras", "must be a list"),
    ],
)
def test_each_bad_lora_is_refused_naming_its_field(loras, field, needle):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="a fox", loras=loras)
    assert caught.value.field == field and needle in str(caught.value)


def test_one_lora_on_each_checkpoint_at_its_own_weight_is_fine():
    request = GenerationRequest(prompt="x", loras=[{"name": "ink", "weight": 1.5, "target": "turbo"},
                                                   {"name": "ink", "weight": 0.6, "target": "raw"}])  # fmt: skip
    assert [(c.weight, c.target) for c in request.active_loras] == [(1.5, "turbo")]


def test_history_queries_filter_by_lora_name():
    assert HistoryQuery(lora=" styles/ink ").lora == "styles/ink" and HistoryQuery().lora == ""
    for bad in (5, "x\x00", "x" * 201):
        with pytest.raises(InvalidRequest, match=r"^lora: "):
            HistoryQuery(lora=bad)
