"""The LoRA picker's work, in-process through the page's own handlers: rows into requests, uploads and the Hub into
the lists, Reuse / Vary / PNG info's Send to Generate putting LoRAs back (and saying which are missing), Compare
without vs with LoRAs, and History's LoRA filter. A real StudioService on the demo checkpoints."""

from __future__ import annotations

import gradio as gr
import pytest
from lora_helpers import random_factors, write_lora

from storage import HistoryStore
from studio.service import StudioService
from ui.handlers import COMPARE_LORAS, Handlers
from ui.layout import build_ui
from ui.loras import NO_LORA, LoraHandlers, lora_choices, parse_hub_address

FILL_LORA_ACCORDION = 14  # _fill_generate's outputs: the 14 of the form, the LoRAs' accordion, the picker's
FILL_LORA_NOTE = 15  # note, then its rows
ROWS = slice(FILL_LORA_NOTE + 1, None)


@pytest.fixture(scope="module")
def names(lora_manager, lora_dir):
    """Two LoRAs in the session's LoRA folder, named apart from the other modules' (a file name must be unique there
    for a name written by another tool to find it)."""
    transformer = lora_manager.pipes["turbo"].transformer
    write_lora(lora_dir / "ui" / "quill.safetensors", random_factors(transformer, seed=21), "kohya")
    write_lora(lora_dir / "ui" / "parchment.safetensors", random_factors(transformer, seed=22), "diffusers")
    return "ui/quill", "ui/parchment"


@pytest.fixture
def service(lora_manager, tmp_path):
    store = HistoryStore(tmp_path / "data").open()
    yield StudioService(lora_manager, store)
    store.close()


def rows(*loras: tuple[str, float, str]) -> list:
    """The picker's 12 values for up to 4 LoRAs (the rest empty)."""
    values = [value for lora in loras for value in lora]
    return values + ["", 1.0, "both"] * (4 - len(loras))


def test_picker_rows_become_the_requests_loras():
    assert lora_choices(rows(("ink", 0.8, "both"), ("paper", -1, "raw"))) == [
        {"name": "ink", "weight": 0.8, "target": "both"},
        {"name": "paper", "weight": -1, "target": "raw"},
    ]
    assert lora_choices(rows()) == [] and lora_choices(["", None, None]) == []


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("someone/krea2-ink", ("someone/krea2-ink", None)),
        ("someone/krea2-ink/ink_v2.safetensors", ("someone/krea2-ink", "ink_v2.safetensors")),
        (
            "https://huggingface.co/someone/krea2-ink/blob/main/sub/ink.safetensors",
            ("someone/krea2-ink", "sub/ink.safetensors"),
        ),
    ],
)
def test_hub_addresses_as_people_paste_them(pasted, expected):
    assert parse_hub_address(pasted) == expected


def test_generate_with_picked_loras_and_reuse_them(service, names):
    ink, paper = names
    handlers = Handlers(service)
    done = list(handlers.generate("a fox", "", "turbo", 1, 0.0, 256, 256, 4, False, 1, [], None,
                                  *rows((ink, 0.8, "both"), (paper, 1.0, "raw"))))  # fmt: skip
    assert f"LoRAs {ink.replace('/', '/')} 0.8" in done[-1][3]  # the Turbo run used ink; paper is Raw's only
    generation_id = done[-1][4][0]["generation_id"]
    filled = handlers.reuse([generation_id, 0], {})
    assert filled[FILL_LORA_NOTE] == ""  # nothing missing
    assert [update["value"] for update in filled[ROWS]][:6] == [ink, 0.8, "both", "", 1.0, "both"]
    assert filled[FILL_LORA_ACCORDION]["open"] is True  # the LoRAs filled in are shown
    varied = handlers.vary([generation_id, 0], {})
    assert varied[7] == 5 and varied[ROWS][0]["value"] == ink  # vary keeps the LoRAs


def test_reuse_says_which_lora_is_missing(service, names, lora_dir):
    handlers = Handlers(service)
    gone = write_lora(lora_dir / "ui" / "gone.safetensors", random_factors(service.manager.pipes["turbo"].transformer,
                                                                         seed=23), "krea")  # fmt: skip
    done = list(handlers.generate("a fox", "", "turbo", 1, 0.0, 256, 256, 4, False, 1, [], None,
                                  *rows(("ui/gone", 0.5, "both"))))  # fmt: skip
    gone.unlink()
    filled = handlers.reuse([done[-1][4][0]["generation_id"], 0], {})
    assert "The LoRA ui/gone" in filled[FILL_LORA_NOTE] and "is not in the LoRA folder" in filled[FILL_LORA_NOTE]
    assert filled[ROWS][0]["value"] == ""  # the row stays empty, and the note says why
    assert filled[FILL_LORA_ACCORDION] == {"open": True, "__type__": "update"}  # where it is read, not closed away


def test_send_to_generate_takes_the_loras_of_our_png_and_an_a1111_one(service, names, tmp_path):
    ink, _ = names
    handlers = Handlers(service)
    done = list(handlers.generate("a fox", "", "turbo", 1, 0.0, 256, 256, 4, False, 1, [], None,
                                  *rows((ink, -0.4, "both"))))  # fmt: skip
    _, _, values = handlers.png_info(done[-1][4][0]["path"])
    filled = handlers.send_png_to_generate(values, {})
    assert [update["value"] for update in filled[ROWS]][:3] == [ink, -0.4, "both"] and filled[0] == "a fox"
    foreign = dict(values, loras=[{"name": "quill", "weight": 0.9, "hash": ""}])  # A1111 writes the file name alone
    filled = handlers.send_png_to_generate(foreign, {})
    assert filled[ROWS][0]["value"] == ink and "was found as ui/quill" in filled[FILL_LORA_NOTE]


def test_compare_without_and_with_loras(service, names):
    ink, _ = names
    handlers = Handlers(service)
    outputs = list(handlers.compare("a fox", "", 3, False, 256, 256, 1, 3.5, 1, None, COMPARE_LORAS, "turbo",
                                    *rows((ink, 1.0, "both"))))  # fmt: skip
    progress, _, _, pair, info = outputs[-1]
    assert progress == "**Done**" and len(pair["value"]) == 2 and "Seed **3** for both" in info
    assert pair["label"] == "Krea 2 Turbo: without ↔ with LoRAs"  # the names issue 18 asks for
    assert "Krea 2 Turbo without LoRAs" in info and "Krea 2 Turbo with LoRAs" in info
    no_loras = list(handlers.compare("a fox", "", 3, False, 256, 256, 1, 3.5, 1, None, COMPARE_LORAS, "turbo",
                                     *rows()))  # fmt: skip
    assert "LoRA" in no_loras[-1][0] and no_loras[-1][0].startswith("⚠️")


def test_uploads_fill_a_row_and_refusals_are_a_note(service, tmp_path):
    handlers = Handlers(service).loras
    good = write_lora(tmp_path / "incoming" / "fresh.safetensors", random_factors(
        service.manager.pipes["turbo"].transformer, seed=24), "diffusers")  # fmt: skip
    note, *lists = handlers.upload(str(good), "", "", "", "", "", "", "", "")
    assert note == "Added **fresh** to the LoRA folder." and lists[0]["value"] == "fresh"
    assert ("fresh", "fresh") in lists[4]["choices"] and lists[4]["value"] == ""  # the other picker's list has it
    wrong = write_lora(tmp_path / "incoming" / "wrong.safetensors", {"img_in": random_factors(
        service.manager.pipes["turbo"].transformer, ["img_in"])["img_in"][::-1]}, "diffusers")  # fmt: skip
    note, *_ = handlers.upload(str(wrong), *[""] * 8)
    assert note.startswith("⚠️ The LoRA wrong does not fit") and "wrong" not in service.lora_names()
    note, *_ = handlers.add_from_hub("not a repo", *[""] * 8)
    assert note.startswith("⚠️ Type a Hub repo")
    note, *_ = handlers.add_from_hub("a/b/../../../etc/passwd.safetensors", *[""] * 8)  # the typing, not the repo
    assert note.startswith("⚠️ A file in a Hub repo is named by its path inside the repo"), note
    assert NO_LORA in handlers.choices()


def test_enter_in_the_hub_box_during_a_download_starts_no_second_one():
    """The held Add button stops a second click; Enter in the address box meets the picker's flag instead."""
    downloading, button, note = LoraHandlers.hub_started(False)
    assert downloading is True and button["interactive"] is False and note == "Downloading from the Hub…"
    with pytest.raises(gr.Error):
        LoraHandlers.hub_started(True)
    downloading, button = LoraHandlers.hub_done()
    assert downloading is False and button["interactive"] is True


def test_the_list_says_which_files_it_leaves_out_for_their_names(service, lora_dir, tmp_path):
    """A hostile pass: a LoRA copied into the folder as `weird:name.safetensors` vanished from every list without a
    word (only the server log said why). The refreshed list's note names it and says what to do."""
    handlers = Handlers(service).loras
    note, *lists = handlers.refresh(*[""] * 4)
    assert note == "" and len(lists) == 4
    odd = lora_dir / "ui" / "odd,name.safetensors"
    odd.parent.mkdir(parents=True, exist_ok=True)
    odd.write_bytes(b"")
    try:
        note, *_ = handlers.refresh(*[""] * 4)
    finally:
        odd.unlink()
    assert note.startswith("⚠️ ui/odd,name.safetensors is not listed: its name must be a LoRA name"), note
    assert note.endswith("rename the file.") and "&lt;" in note  # shown as typed, not read as HTML


def test_history_filters_by_lora_and_lists_the_loras_used(service, names):
    ink, paper = names
    handlers = Handlers(service)
    for loras in (rows((ink, 1.0, "both")), rows((paper, 0.5, "both")), rows()):
        list(handlers.generate("a fox", "", "turbo", 1, 0.0, 256, 256, 4, False, 1, [], None, *loras))
    assert handlers.loras.history_choices()["choices"] == [("All LoRAs", ""), *((n, n) for n in sorted([ink, paper]))]
    _, count, *_ = handlers.history("", "all", False, False, None, ink)
    assert count == "1 of 1 generation"
    _, count, *_ = handlers.history("", "all", False, False, None, "")
    assert count == "1–3 of 3 generations"


def test_the_page_builds_with_both_pickers(service):
    app = build_ui(service)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"generate-lora-1", "generate-lora-4", "compare-lora-1", "compare-mode", "history-lora"} <= ids
    assert isinstance(app, gr.Blocks)


def test_a_lora_note_shows_quotes_and_markdown_characters_as_typed():
    """A hostile pass found "it has &#x27;a&#x27;" in an upload's refusal: the `#` of the quote's entity had been
    escaped for Markdown, so the entity showed as text."""
    from ui.text import shown

    note = shown("it has 'a'; expected keys like 'transformer…' #1 *b* <i>")
    assert "&#x27;a&#x27;" in note and "\\&" not in note and "&\\#" not in note
    assert "\\#1 \\*b\\*" in note and "&lt;i&gt;" in note
