"""A1111-style `<lora:name:weight>` tags typed in a prompt: the request (the one place requests are validated) takes
them out of the prompt and runs them as LoRAs for both checkpoints, after the picker's / API's / CLI's own; a LoRA
named twice is refused. The PNG and history keep the prompt without its tags, so sending a PNG or a history row back
to Generate runs each LoRA once. Request rules on their own, then the page's handlers on the demo checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import random_factors, write_lora
from PIL import Image
from test_cli import parsed

from krea2.errors import InvalidRequest
from krea2.request import GenerationRequest, LoraChoice
from storage.pnginfo import read_parameters
from studio import cli
from ui.handlers import for_people

FILL_LORA_NOTE = 15  # _fill_generate's outputs: the 14 of the form, the LoRAs' accordion, the picker's note, rows
NO_ROWS = ["", 1.0, "both"] * 4


def test_tags_leave_the_prompt_and_join_the_loras():
    req = GenerationRequest(prompt="a fox, <lora:styles/ink:0.8>, in the snow <LYCO:paper>", loras=["grain:-0.5"])
    assert req.prompt == "a fox, in the snow"  # what the text encoder sees, and history and the PNG keep
    assert req.loras == (LoraChoice("grain", -0.5), LoraChoice("styles/ink", 0.8), LoraChoice("paper", 1.0))
    assert req.to_dict()["prompt"] == "a fox, in the snow"
    same = GenerationRequest(prompt="a fox, in the snow", loras=["grain:-0.5", "styles/ink:0.8", "paper"])
    assert req == same and req.with_seed(3) == same.with_seed(3)  # rebuilt (replace): nothing is applied twice
    untouched = "a fox,  in the snow ,"
    assert GenerationRequest(prompt=untouched).prompt == untouched.strip()  # without tags: the prompt as typed


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"prompt": "a fox <lora:ink:0.5>", "loras": ["ink:1"]},
         "The LoRAs must name each LoRA once, and ink is named in the LoRA list and as a <lora:…> tag in the prompt."),
        ({"prompt": "a fox <lora:ink:0.5> <lora:ink>"},
         "The LoRAs must name each LoRA once, and ink is named in two <lora:…> tags of the prompt."),
        ({"prompt": "a fox <lora:ink:0.5:0.2>"}, "The prompt has a LoRA tag with more than a name and a weight."),
        ({"prompt": "a fox <lora:ink:3>"}, "A LoRA's weight must be between -2.0 and 2.0 (it is 3)."),
        ({"prompt": "<lora:ink:1>"}, "Type a prompt first: describe the image you want."),
        ({"prompt": "a fox", "negative_prompt": "blur <lora:ink:1>"},
         "The negative prompt must not hold LoRA tags: put them in the prompt."),
        ({"prompt": "a fox <lora:e:1>", "loras": ["a", "b", "c", "d"]},
         "The LoRAs must be at most 4, tags in the prompt included."),
    ],
)  # fmt: skip
def test_each_bad_tag_is_one_sentence(fields, sentence):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**fields)
    assert for_people(caught.value) == sentence


def test_the_cli_merges_tags_with_its_lora_options(capsys):
    request = cli.request_of(parsed("--demo", "--prompt", "a fox <lora:ink:0.5>", "--lora", "paper:1"), (256, 256))
    assert request.prompt == "a fox" and [c.name for c in request.loras] == ["paper", "ink"]
    assert cli.run(parsed("--demo", "--prompt", "a fox <lora:ink:0.5>", "--lora", "ink"), environ={}) == 2
    assert "ink is named in the LoRA list and as a <lora:…> tag" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ on the demo model
@pytest.fixture(scope="module")
def ink(lora_manager, lora_dir) -> str:
    write_lora(lora_dir / "tags" / "ink.safetensors", random_factors(lora_manager.pipes["turbo"].transformer, seed=51),
               "kohya")  # fmt: skip
    return "tags/ink"


def generate(handlers, prompt: str, rows: list = NO_ROWS) -> tuple:
    return list(handlers.generate(prompt, "", "turbo", 2, 0.0, 256, 256, 5, False, 1, [], None, *rows))[-1]


def picture(done: tuple) -> np.ndarray:
    return np.asarray(Image.open(done[4][0]["path"]).convert("RGB"), dtype=np.int16)


def test_a_tag_runs_exactly_as_the_picker_does(lora_handlers, ink):
    tagged = generate(lora_handlers, f"a red circle <lora:{ink}:0.8>")
    picked = generate(lora_handlers, "a red circle", [ink, 0.8, "both", *NO_ROWS[3:]])
    plain = generate(lora_handlers, "a red circle")
    assert f"LoRAs {ink} 0.8" in tagged[3], tagged[3]
    assert np.array_equal(picture(tagged), picture(picked))  # the same LoRA, and the tag never reached the encoder
    assert np.abs(picture(tagged) - picture(plain)).mean() > 1  # and the LoRA does change the picture
    row = lora_handlers.service.get(tagged[4][0]["generation_id"])
    assert row.prompt == "a red circle" and [(x.name, x.weight) for x in row.loras] == [(ink, 0.8)]


def test_an_unknown_lora_in_a_tag_is_one_sentence_naming_it(lora_handlers, ink):
    everything = lora_handlers.history_filter("", "all", False, False)
    before = lora_handlers.service.count(everything)
    note = generate(lora_handlers, "a red circle <lora:tags/nowhere:1>")[1]
    assert note.startswith("⚠️") and "tags/nowhere is not" in note and "\n" not in note, note
    assert lora_handlers.service.count(everything) == before  # nothing recorded


def test_png_and_history_round_trips_run_the_lora_once(lora_handlers, ink):
    done = generate(lora_handlers, f"a red circle, <lora:{ink}:0.8>")
    text, _parsed, values = lora_handlers.png_info(done[4][0]["path"])
    assert text.startswith(f"a red circle <lora:{ink}:0.8>\n") and text.count("<lora:") == 1  # the writer's tag only
    selected = [done[4][0]["generation_id"], 0]
    for filled in (lora_handlers.send_png_to_generate(values, {}), lora_handlers.reuse(selected, {})):
        assert filled[0] == "a red circle" and filled[FILL_LORA_NOTE] == ""
        rows = [update["value"] for update in filled[FILL_LORA_NOTE + 1 :]]
        assert rows[:6] == [ink, 0.8, "both", "", 1.0, "both"]
        again = generate(lora_handlers, filled[0], rows)  # what the page sends next: the LoRA once, no refusal
        assert f"LoRAs {ink} 0.8" in again[3] and np.array_equal(picture(again), picture(done))


def test_a_recorded_prompt_that_still_holds_its_tag_is_sent_back_once(lora_handlers, ink, tmp_path):
    """A PNG written before requests took tags out: the tag stayed in its prompt, the same LoRA in its list."""
    done = generate(lora_handlers, "a red circle", [ink, 0.8, "both", *NO_ROWS[3:]])
    _text, _parsed, values = lora_handlers.png_info(done[4][0]["path"])
    old = {**values, "prompt": f"a red circle <lora:{ink}:0.8>"}
    filled = lora_handlers.send_png_to_generate(old, {})
    assert filled[0] == "a red circle" and [u["value"] for u in filled[FILL_LORA_NOTE + 1 :]][:3] == [ink, 0.8, "both"]
    foreign = {"prompt": f"a red circle <lora:{ink}:0.6>", "loras": []}  # a tool that keeps tags in the prompt
    filled = lora_handlers.send_png_to_generate(foreign, {})
    assert filled[0] == "a red circle" and [u["value"] for u in filled[FILL_LORA_NOTE + 1 :]][:2] == [ink, 0.6]
    assert read_parameters(done[4][0]["path"])["request"]["prompt"] == "a red circle"
