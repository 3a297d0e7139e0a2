"""The Generate and Compare tabs' image inputs through the UI handlers, on the demo checkpoints and a real store:
the editor's picture and painted strokes, the hi-res pass, send-to-img2img and reuse."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from storage import HistoryStore
from studio.service import StudioService
from ui.handlers import COMPARE_CHECKPOINTS, LORA_VALUES, Handlers
from ui.image_inputs import (
    MASK_TINT,
    PREVIEW_SIDE,
    Placing,
    editor_value,
    mask_preview,
    painted_mask,
    reused_mask_view,
    stale_echo,
)


class Selected:
    """gr.SelectData's stand-in for a gallery click: only `.index` is read."""

    def __init__(self, index: int) -> None:
        self.index = index


@pytest.fixture
def handlers(manager, tmp_path):
    store = HistoryStore(tmp_path / "data").open()
    yield Handlers(StudioService(manager, store))
    store.close()


NO_LORAS = (None,) * LORA_VALUES  # the LoRA picker's empty rows, before the image inputs


def last(stream) -> tuple:
    outputs = list(stream)
    assert outputs, "the handler yielded nothing"
    return outputs[-1]


def editor_with_stroke(size=(256, 256)) -> dict:
    picture = Image.new("RGB", size, (230, 200, 20))
    stroke = Image.new("RGBA", size, (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (0, 0, size[0] // 2, size[1]))  # the left half painted
    return {"background": picture, "layers": [stroke], "composite": picture}


def test_a_painted_editor_inpaints_and_the_unpainted_half_comes_back_unchanged(handlers) -> None:
    editor = editor_with_stroke()
    out = last(handlers.generate("a blue background", "", "turbo", 8, 0.0, 1024, 1024, 5, False, 1, [], None,
                                 *NO_LORAS, editor, 1.0, 0, 0, 0, 0, 0))  # fmt: skip
    _final, text, _gallery, _seeds, items = out
    assert "**Done**" in text and "generated at 256×256" in text, text
    generation = handlers.service.get(items[0]["generation_id"])
    assert (generation.mode, generation.width, generation.strength) == ("inpaint", 256, 1.0)
    result = np.asarray(Image.open(items[0]["path"]).convert("RGB"), dtype=np.int16)
    before = np.asarray(editor["background"], dtype=np.int16)
    assert np.array_equal(result[:, 128:], before[:, 128:])
    assert np.abs(result[:, :128] - before[:, :128]).mean() > 10


def test_upscale_send_and_reuse(handlers) -> None:
    out = last(handlers.generate("a red circle", "", "turbo", 8, 0.0, 256, 256, 9, False, 1, []))
    items = out[4]
    assert out[2][0][1] == "Krea 2 Turbo · seed 9"  # a result tile says which checkpoint drew it, as History's do
    selected = [items[0]["generation_id"], 0]
    up = last(handlers.upscaler(2.0)(selected, items))
    assert "**Done**" in up[1] and "upscaled ×2 to 512×512" in up[1], up[1]
    hires = handlers.service.get(up[4][0]["generation_id"])
    assert (hires.mode, hires.width, hires.seed, hires.strength) == ("hires", 512, 9, 0.35)

    # The picture sent comes with the note under the editor, said from it (the editor may send no event for it).
    sent = handlers.send_to_image(selected, 0.6, 8, 0, 0, 0, 0, None, None)
    editor, note, box, _preview, placing, mark, _panel, _tabs = sent
    assert editor["background"].size == (256, 256) and editor["layers"] == []
    assert placing == Placing(None, 1) and mark == 1  # the page's mark once it is in
    assert note == "Init image 256×256: img2img at strength 0.60, generated at 256×256." and not box["visible"]

    # Reuse settings: the settings with the editor emptied, then the picture and its note (`place_source`).
    strength, _panel, *feather_and_sides, reused, placing, emptied = handlers.reuse_source([hires.id, 0], placing)
    restored = placing.value
    assert placing.mark == 2  # the next picture put in
    assert restored["background"].size == (512, 512) and strength == 0.35 and feather_and_sides == [0] * 5
    assert reused is None and emptied is None  # no mask to show beside the editor
    placed, note, box, _preview, kept, mark = Handlers.place_source(placing, strength, *feather_and_sides, reused)
    assert placed is restored and not box["visible"] and kept == Placing(None, 2) and mark == 2  # the value let go
    assert note == "Init image 512×512: img2img at strength 0.35, generated at 512×512.", note
    *_settings, reused, placing, emptied = handlers.reuse_source(selected, kept)
    assert reused is None and placing == Placing(None, 3, pending=True) and emptied is None  # text-to-image
    placed, note, box, _preview, kept, mark = Handlers.place_source(placing, 0.6, 0, 0, 0, 0, 0, None)
    assert placed == gr.skip() and note == "" and not box["visible"]  # the editor stays empty
    assert kept == Placing(None, 3) and mark == 3

    # A second step for a placing already placed (a double click: the first step ran twice, and the first second step
    # placed the later one) changes nothing, instead of a note said from no picture under the picture placed.
    again = handlers.reuse_source([hires.id, 0], kept)[-2]
    assert Handlers.place_source(again, 0.35, 0, 0, 0, 0, 0, None)[4:] == (Placing(None, 4), 4)
    assert Handlers.place_source(Placing(None, 4), 0.35, 0, 0, 0, 0, 0, None) == (gr.skip(),) * 6


def test_compare_starts_both_checkpoints_from_the_image(handlers) -> None:
    init = Image.new("RGB", (250, 256), (20, 160, 40))  # not a multiple of 16: resized, and said so as Generate does
    out = last(handlers.compare("a circle", "", 4, False, 512, 512, 4, 3.5, 8, None, COMPARE_CHECKPOINTS, "turbo",
                                *NO_LORAS, init, 0.5))  # fmt: skip
    assert out[0].startswith("**Done**") and "Image input: resized from 250×256 to 256×256" in out[0], out[0]
    rows = handlers.service.page(handlers.history_filter("a circle", "all", False, True), None).items
    assert sorted((g.checkpoint, g.mode, g.width, g.strength) for g in rows) == [
        ("raw", "img2img", 256, 0.5), ("turbo", "img2img", 256, 0.5)
    ]  # fmt: skip


def test_bad_image_inputs_are_one_line(handlers) -> None:
    editor = editor_with_stroke()
    out = last(handlers.generate("x", "", "turbo", 8, 0.0, 256, 256, 1, False, 1, [], None, *NO_LORAS, editor, 1.0, 0,
                                 5000, 0, 0, 0))  # fmt: skip
    assert "Outpaint left" in out[1] and "\n" not in out[1].strip(), out[1]


def test_editor_values() -> None:
    assert painted_mask([], (8, 8)) is None
    value = editor_value(Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255))
    assert painted_mask(value["layers"], (64, 64)).getextrema() == (255, 255)


def test_history_and_png_info_show_and_restore_the_init_image(handlers) -> None:
    init = {"background": Image.new("RGB", (256, 256), (20, 160, 40)), "layers": [], "composite": None}
    out = last(handlers.generate("from a green picture", "", "turbo", 8, 0.0, 256, 256, 3, False, 1, [], None,
                                 *NO_LORAS, init, 0.4))  # fmt: skip
    item = out[4][0]
    generation = handlers.service.get(item["generation_id"])
    assert "Started from" in handlers.select_result(out[4], Selected(0))[0]
    shown = handlers.history_source([generation.id, 0])
    assert shown["visible"] and shown["value"].endswith(f"{generation.source_sha256}.png")

    _text, _parsed, values = handlers.png_info(item["path"])
    strength, _panel, *feather_and_sides, reused, placing, _emptied = handlers.png_source(values, None)
    editor = placing.value
    assert feather_and_sides == [0] * 5 and reused is None  # the stored mask is already feathered; here there is none
    assert strength == 0.4 and np.array_equal(np.asarray(editor["background"]), np.asarray(init["background"]))
    with pytest.warns(UserWarning, match="not in this app's data folder"):
        assert handlers.png_source({**values, "source_sha256": "0" * 64}, None)[-2].value is None  # nothing to place


def test_the_editor_note_says_what_generate_will_do_before_any_click() -> None:
    picture = Image.new("RGB", (500, 260), (200, 30, 30))
    assert Handlers.describe_start(None, 0.6, 8) == ""
    plain = Handlers.describe_start({"background": picture, "layers": []}, 0.6, 8, 0, 0, 0, 0)
    said = "Init image 500×260: img2img at strength 0.60, generated at 496×256. Resized from 500×260 to 496×256."
    assert plain == said
    layer = Image.new("RGBA", (500, 260), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 250, 260))  # the left half painted
    inpaint = Handlers.describe_start({"background": picture, "layers": [layer]}, 1.0, 0, 0, 0, 0, 0)
    assert "inpaint of 50% of the picture" in inpaint
    outpaint = Handlers.describe_start({"background": picture, "layers": []}, 1.0, 8, 64, 0, 0, 0)
    assert "outpaint, generated at 560×256" in outpaint
    both = Handlers.describe_start({"background": picture, "layers": [layer]}, 1.0, 8, 64, 0, 0, 0)
    assert both.startswith("⚠️ Outpaint makes its own mask: clear the painted strokes")  # they were dropped unsaid
    refused = Handlers.describe_start({"background": picture, "layers": []}, 1.0, 8, 5000, 0, 0, 0)
    assert refused == "⚠️ Outpaint left must be a whole number of pixels from 0 to 1024."


def test_send_to_generate_brings_another_tools_values_into_range_and_says_so(handlers) -> None:
    """A PNG from another tool may say Steps 500, a 5000x3 size, seed -1 or guidance "high": Generate's controls get
    values they take (a control left out of range refused the next run, and a text guidance crashed the handler),
    and the note under the checkpoint says what was changed."""
    values = {"prompt": "a fox", "checkpoint": "raw", "steps": 500, "guidance": "high", "width": 5000, "height": 3,
              "seed": -1}  # fmt: skip
    filled = handlers.send_png_to_generate(values, {})
    prompt, _, checkpoint, steps, guidance, width, height, seed, randomize, _, note = filled[:11]
    note = html.unescape(note)  # the values are shown as text, escaped for the Markdown they sit in
    assert (prompt, checkpoint, steps["value"], guidance["value"]) == ("a fox", "raw", 100, 3.5)
    assert (width, height, seed, randomize) == (2048, 256, 0, True)
    for said in ("Steps 500 is not one Krea 2 Raw takes (1 to 100 in steps of 1): set to 100", "Guidance 'high' is "
                 "not a number", "Width 5000 is not one", "Height 3", "Seed -1"):  # fmt: skip
        assert said in note
    ours = handlers.send_png_to_generate({**values, "steps": 30, "guidance": 2.0, "width": 512, "height": 768,
                                          "seed": 9.0}, {})  # fmt: skip
    assert (ours[3]["value"], ours[4]["value"], ours[5], ours[6], ours[7], ours[8]) == (30, 2.0, 512, 768, 9, False)
    assert "is not one" not in ours[10] and "not a number" not in ours[10]
    odd = handlers.send_png_to_generate({**values, "steps": 7.6, "guidance": float("nan"), "width": 1000,
                                         "height": 10**400, "seed": 10**400}, {})  # fmt: skip
    assert (odd[3]["value"], odd[4]["value"], odd[5], odd[6], odd[8]) == (8, 3.5, 992, 2048, True)
    assert "Steps 7.6 is not one" in html.unescape(odd[10]) and "in steps of 16): set to 992" in odd[10]
    # Numbers, however large, are brought into range, not called "not a number" (a hostile pass: width 1e308).
    assert "Height a 401-digit number is not one" in html.unescape(odd[10])
    assert "Guidance 'nan' is not a number" in html.unescape(odd[10])  # NaN still is not
    huge = handlers.send_png_to_generate({**values, "width": 1e308}, {})
    assert huge[5] == 2048 and "Width 1e+308 is not one" in html.unescape(huge[10])
    # A hostile pass: a list as the checkpoint was "Something went wrong (TypeError)".
    long = handlers.send_png_to_generate({**values, "prompt": "x" * 900_000}, {})  # a hostile pass: filled unsaid
    assert "Generate refuses it until that is changed." in html.unescape(long[10])
    listed = handlers.send_png_to_generate({**values, "checkpoint": ["raw"]}, {})
    assert listed[2] == "turbo" and "Checkpoint \"['raw']\" is not one of this app's" in html.unescape(listed[10])


def test_a_pngs_number_too_large_for_json_is_shown_as_text_and_sent_to_generate_in_range(handlers, tmp_path) -> None:
    """A hostile pass: an A1111 PNG saying "Seed: 99999999999999999999" left both PNG info boxes with a red "Error"
    badge (Gradio's JSON encoder refused an integer past 64 bits) and Send to Generate then had nothing to send."""
    from PIL.PngImagePlugin import PngInfo

    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 3.5, Seed: 99999999999999999999, Size: 512x768"
    meta = PngInfo()
    meta.add_text("parameters", text)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=meta)
    shown_text, parsed, values = handlers.png_info(str(path))
    assert shown_text == text and parsed["seed"] == "99999999999999999999"
    gr.JSON().postprocess(parsed)  # what failed
    filled = handlers.send_png_to_generate(values, {})
    assert (filled[0], filled[7], filled[8]) == ("a cat", 0, True) and "Seed 99999999999999999999" in filled[10]


def test_a_result_deleted_from_history_leaves_the_results_gallery_at_the_next_run(handlers) -> None:
    """A hostile pass: after a delete, the next run's gallery still held the deleted file, and clicking its tile showed
    Gradio's refusal with the file's path on the server."""
    first = last(handlers.generate("a red circle", "", "turbo", 2, 0.0, 256, 256, 1, False, 1, []))
    kept = last(handlers.generate("a blue square", "", "turbo", 2, 0.0, 256, 256, 2, False, 1, first[4]))
    gone = kept[4][0]["generation_id"]
    handlers.delete([gone, 0])
    after = last(handlers.generate("a green star", "", "turbo", 2, 0.0, 256, 256, 3, False, 1, kept[4]))
    shown_ids = [item["generation_id"] for item in after[4]]
    assert gone not in shown_ids and shown_ids[1:] == [first[4][0]["generation_id"]]
    # Before the next run its tile is still there: selecting it says so in the details (no toast and red badge), and
    # the actions on a selection stay hidden.
    details, reuse, vary, selected = handlers.select_result(kept[4], gr.SelectData(None, {"index": 0, "value": None}))
    assert details == f"Generation {gone} no longer exists." and selected is None
    assert reuse == vary == gr.update(visible=False) and handlers.result_actions(selected)[0]["visible"] is False
    assert len(after[2]) == 2 and all(Path(path).is_file() for path, _caption in after[2])


def test_the_mask_preview_tints_what_generate_repaints_and_leaves_the_rest() -> None:
    picture = Image.new("RGB", (256, 128), (230, 200, 20))
    mask = Image.new("L", (256, 128), 0)
    mask.paste(255, (0, 0, 64, 128))  # the left quarter repainted
    mask.paste(128, (64, 0, 96, 128))  # a feathered edge: tinted by half as much
    preview = np.asarray(mask_preview(picture, mask), dtype=np.int16)
    assert preview.shape == (128, 256, 3)
    halfway = (np.array((230, 200, 20)) + np.array(MASK_TINT)) / 2
    assert np.abs(preview[:, :64] - halfway).max() <= 1
    edge = preview[:, 64:96]
    assert np.abs(edge - (np.array((230, 200, 20)) + halfway) / 2).max() <= 2
    assert (preview[:, 96:] == (230, 200, 20)).all()  # outside the mask: the picture's own pixels
    assert mask_preview(picture, None) is None and mask_preview(picture, Image.new("L", (256, 128), 0)) is None
    big = mask_preview(Image.new("RGB", (2048, 1024)), Image.new("L", (2048, 1024), 255))
    assert big.size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)  # a thumbnail for the page, the picture's proportions kept


def test_a_reused_inpaint_mask_is_shown_until_the_editor_no_longer_holds_it(handlers, capsys) -> None:
    """Gradio 6.31's editor does not draw the mask "Use these settings" puts in it: the page shows it tinted beside
    the editor while the editor sends the same layer back, and hides it once a stroke, another picture or Clear canvas
    replaced it (what the editor then sends, measured in Chromium)."""
    out = last(handlers.generate("a blue background", "", "turbo", 8, 0.0, 256, 256, 5, False, 1, [], None,
                                 *NO_LORAS, editor_with_stroke(), 1.0, 0, 0, 0, 0, 0))  # fmt: skip
    selected = [out[4][0]["generation_id"], 0]
    _strength, _panel, *_zeros, reused, placing, _emptied = handlers.reuse_source(selected, None)
    editor = placing.value
    assert "shown tinted under the editor" in capsys.readouterr().out  # the toast (gr.Info prints outside a page)
    assert reused.size == (256, 256) and np.array_equal(
        np.asarray(reused), np.asarray(painted_mask(editor["layers"], (256, 256)))
    )

    def changed(value):
        note, box, preview = Handlers.editor_changed(value, 1.0, 0, 0, 0, 0, 0, reused, 0, None)
        return note, box["visible"], preview

    note, visible, preview = changed(editor)  # the editor sends back what it was given
    assert "inpaint of 50% of the picture" in note and visible
    pixels = np.asarray(preview, dtype=np.int16)
    assert pixels.shape == (256, 256, 3) and (pixels[:, 200:] == (230, 200, 20)).all()
    assert np.abs(pixels[:, :100] - np.asarray(editor["background"], dtype=np.int16)[:, :100]).mean() > 50

    stroke = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (180, 20, 220, 60))  # a stroke: the layer holds only it
    empty = Image.new("RGBA", (256, 256), (0, 0, 0, 0))  # the eraser, another picture or Clear canvas
    for layers in ([stroke], [empty], []):
        assert changed({**editor, "layers": layers})[1:] == (False, None)
    assert changed(None)[1:] == (False, None)
    assert Handlers.start_note(editor, 1.0, 0, 0, 0, 0, 0, None)[1]["visible"] is False  # no reuse: strokes drawn

    # Outpaint while the reused mask is held: the editor shows no strokes to clear, so the refusal names that mask, in
    # the note and on Generate's progress line alike; with strokes of one's own it still says to clear them.
    said = "⚠️ Outpaint makes its own mask: drop the reused inpaint mask shown under the editor"
    assert Handlers.describe_start(editor, 1.0, 0, 64, 0, 0, 0, reused).startswith(said)
    refused = last(handlers.generate("a blue background", "", "turbo", 8, 0.0, 256, 256, 5, False, 1, [], None,
                                     *NO_LORAS, editor, 1.0, 0, 64, 0, 0, 0, reused))  # fmt: skip
    assert refused[1].startswith(said)
    strokes = Handlers.describe_start({**editor, "layers": [stroke]}, 1.0, 0, 64, 0, 0, 0, reused)
    assert strokes.startswith("⚠️ Outpaint makes its own mask: clear the painted strokes")

    _text, _parsed, values = handlers.png_info(out[4][0]["path"])  # PNG info's Send to Generate does the same
    *_rest, sent_mask, sent, _emptied = handlers.png_source(values, None)
    assert reused_mask_view(sent.value, sent_mask)[0]["visible"] is True


def test_an_upload_says_the_note_and_sets_the_feather_as_the_picture_lands() -> None:
    """The editor's upload event says the note too: its change event may come before the picture is in, empty, with
    none after (measured in Chromium). An upload without a picture is that early one: the note is left alone."""
    picture = {"background": Image.new("RGB", (256, 256), (20, 160, 40)), "layers": [], "composite": None}
    feather, note, box, _preview = Handlers.editor_uploaded(picture, 0.6, 0, 0, 0, 0, 0, None, 0, None)
    assert feather == 8 and not box["visible"]  # a new picture: the default feather back
    assert note == "Init image 256×256: img2img at strength 0.60, generated at 256×256."
    assert Handlers.editor_uploaded(None, 0.6, 0, 0, 0, 0, 0, None, 0, None) == (8, gr.skip(), gr.skip(), gr.skip())
    reused = editor_value(picture["background"], Image.new("L", (256, 256), 255))
    feather, note, box, _preview = Handlers.editor_uploaded(
        reused, 0.6, 0, 0, 0, 0, 0, painted_mask(reused["layers"], (256, 256)), 0, None
    )
    assert feather == gr.skip() and "inpaint of 100% of the picture" in note and box["visible"]  # feather kept at 0


def test_events_sent_before_a_picture_the_app_put_in_was_in_change_nothing() -> None:
    """The editor sends events as its value goes and comes (the emptying before a reuse, the picture's arrival), some
    with what it held before or nothing, which reached the server after the note the app said for the new picture
    (measured in Chromium). They carry the page's mark from before that picture (the answer that puts it in
    moves it) and change nothing: not the note, the preview or the feather."""
    before = {"background": Image.new("RGB", (320, 256), (200, 30, 30)), "layers": [], "composite": None}
    placed = editor_value(Image.new("RGB", (256, 256), (30, 90, 200)))
    placing = Placing.after(Placing(None, 1), placed)
    assert placing.mark == 2 and Placing.after(None, None).mark == 1
    assert stale_echo(1, placing) and stale_echo(None, placing) and not stale_echo(2, placing)
    assert not stale_echo(0, None)  # nothing put in yet: an upload, a stroke

    assert Handlers.editor_changed(before, 0.6, 0, 0, 0, 0, 0, None, 1, placing) == (gr.skip(),) * 3
    assert Handlers.editor_changed(None, 0.6, 0, 0, 0, 0, 0, None, 1, placing) == (gr.skip(),) * 3  # not blanked
    assert Handlers.editor_uploaded(before, 0.6, 0, 0, 0, 0, 0, None, 1, placing) == (gr.skip(),) * 4  # feather too
    note, _box, _preview = Handlers.editor_changed(placed, 0.55, 0, 0, 0, 0, 0, None, 2, placing)
    assert note == "Init image 256×256: img2img at strength 0.55, generated at 256×256."
    assert Handlers.editor_changed(None, 0.55, 0, 0, 0, 0, 0, None, 2, placing)[0] == ""  # Clear canvas, after


def test_a_settings_change_leaves_editor_events_sent_before_it_unanswered() -> None:
    """Moving the strength says the note and moves the page's mark: an editor event sent before, with the strength
    from then, arrives later (it uploads the picture first) and is left unanswered instead of putting it back."""
    picture = {"background": Image.new("RGB", (256, 256), (20, 160, 40)), "layers": [], "composite": None}
    note, placing, mark = Handlers.settings_changed(picture, 0.3, 8, 0, 0, 0, 0, None, None)
    assert note == "Init image 256×256: img2img at strength 0.30, generated at 256×256." and mark == placing.mark == 1
    assert Handlers.editor_changed(picture, 0.6, 8, 0, 0, 0, 0, None, 0, placing) == (gr.skip(),) * 3  # sent before
    assert Handlers.editor_uploaded(picture, 0.6, 8, 0, 0, 0, 0, None, 0, placing) == (gr.skip(),) * 4
    assert Handlers.editor_changed(picture, 0.3, 8, 0, 0, 0, 0, None, 1, placing)[0] == note  # sent after: answered
    pending = Placing(picture, 4, pending=True)  # a reuse between its two steps keeps its picture to place
    assert Handlers.settings_changed(picture, 0.3, 8, 0, 0, 0, 0, None, pending)[1] == Placing(picture, 5, True)
