"""The web app as a daily tool (issue 21), in-process: errors phrased for people, the time left, sizes, seeds,
batches in History and the vary action. A real StudioService on the demo checkpoints and a temporary database."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

from krea2 import GenerationRequest, InvalidRequest
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.request import MAX_SEED
from storage import HistoryStore
from studio.service import StudioService
from ui.details import describe
from ui.handlers import Handlers, StepClock, error_note, for_people, next_seed, seeds_text
from ui.presets import CUSTOM, checkpoint_note, preset_for


@pytest.fixture
def service(manager, tmp_path):
    store = HistoryStore(tmp_path / "data").open()
    yield StudioService(manager, store)
    store.close()


def request_error(**fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**{"prompt": "a fox", **fields})
    return caught.value


def test_errors_read_as_sentences_for_people():
    assert for_people(request_error(prompt="")) == "Type a prompt first: describe the image you want."
    width = for_people(request_error(width=1000))
    assert width == "The width must be a multiple of 16 (it is 1000)."
    assert "(got" not in for_people(request_error(prompt="<|im_end|>"))  # typed text is never quoted back
    assert for_people(request_error(steps=0)).startswith("Steps must be between")
    # A whole number reads whole, however large: a seed of 12345678901 read "(it is 1.23457e+10)".
    assert for_people(request_error(seed=12345678901)).endswith("(it is 12345678901).")
    assert for_people(request_error(seed=1e20)).endswith("(it is 100000000000000000000).")
    assert for_people(request_error(guidance=25.5)).endswith("(it is 25.5).")


def test_an_error_note_is_plain_text_in_markdown():
    note = error_note(ValueError("boom"))
    assert note.startswith("⚠️ Something went wrong \\(ValueError\\)")


def test_time_left_comes_from_the_measured_step_rate():
    clock = StepClock()
    assert "estimating" in clock.progress(1, 10, 5.0)  # the first step includes the wait and the prompt encoding
    assert clock.remaining(3, 10, 6.0) == pytest.approx(3.5)  # 0.5 s a step, 7 steps to go
    assert "about 4 s left" in clock.progress(3, 10, 6.0)  # 3.5 s, rounded
    assert "decoding" in clock.progress(10, 10, 9.5)
    assert clock.remaining(1, 8, 12.0) is None  # Compare's second run starts measuring again


def test_the_size_preset_follows_the_sides():
    assert preset_for(1024, 1024, "turbo").startswith("1:1 · 1024×1024")
    assert preset_for(1000, 1024, "turbo") == CUSTOM
    assert preset_for(2048, 2048, "turbo").startswith("1:1 · 2048×2048")
    assert preset_for(2048, 2048, "raw") == CUSTOM  # Raw has no 4 MP presets


def test_sides_typed_past_the_sliders_range_match_the_size_the_page_clamps_them_to(service):
    """The width and height boxes' event passes the values unchecked (Gradio's check refused 5000 and left a bare
    "Error" badge on Size): clamped as the page clamps them on blur, not rounded (1032 stays Custom), and any JSON
    a client sends answers Custom."""
    handlers = Handlers(service)
    assert handlers.match_preset(5000, 0, "turbo") == handlers.match_preset(2048, 256, "turbo") == CUSTOM
    assert handlers.match_preset(0, -16, "turbo") == "1:1 · 256×256 (demo model)"
    assert handlers.match_preset(1032, 1024, "turbo") == CUSTOM
    assert handlers.match_preset(1024.0, 1024, "raw").startswith("1:1 · 1024×1024")
    for odd in ([None, None, []], ["1024", 1024, "turbo"], [float("nan"), 1024, {"x": 1}]):
        assert handlers.match_preset(*odd) == CUSTOM


def test_demo_mode_opens_at_the_demo_models_own_size(service, demo_sources):
    """The demo model learned 256² and 512² squares and draws best at 256²: in demo mode the tabs open at 256², named
    as a preset; with the real checkpoints they open at the request's 1024² and the demo sizes are no presets."""
    assert service.demo and Handlers(service).default_size == (256, 256)
    assert preset_for(512, 512, "turbo", demo=True) == "1:1 · 512×512 (demo model)"
    assert preset_for(256, 256, "raw", demo=True) == "1:1 · 256×256 (demo model)"
    assert preset_for(512, 512, "turbo") == CUSTOM
    assert preset_for(2048, 2048, "turbo", demo=True) == CUSTOM  # no 4 MP preset for a model that learned 512²
    # and the note under the checkpoint toggle gives the demo model's size, not the real checkpoint's 1-4 MP
    assert checkpoint_note("turbo", demo=True) == (
        "Distilled: 8 steps, guidance 0 by default (a negative prompt applies only with guidance above 0). The demo "
        "model draws best at 256×256."
    )
    assert checkpoint_note("turbo").endswith("Best at 1-4 MP.") and checkpoint_note("raw").endswith("~1 MP.")
    switched = Handlers(service).switch_checkpoint("raw", 8, 0.0, "turbo", {})
    assert "The demo model draws best at 256×256." in switched[3] and "MP" not in switched[3]
    real = StudioService(ModelManager(PipelineLoader(demo_sources, torch.float32), demo=False), service.store)
    assert not real.demo and Handlers(real).default_size == (1024, 1024)  # (never started: nothing is loaded)


def test_seeds_of_a_batch_and_the_next_ones():
    assert seeds_text([7]) == "Seed used: **7**"
    assert seeds_text([7, 8]) == "Seeds used: **7**, **8**"
    assert next_seed(7, 2) == 9
    assert next_seed(MAX_SEED, 1) == 0


def test_generate_with_an_empty_prompt_says_so_once_without_raising(service):
    outputs = list(Handlers(service).generate("", "", "turbo", 8, 0.0, 256, 256, 0, True, 1, [], None))
    [(_, progress, *_rest)] = outputs
    assert progress == "⚠️ Type a prompt first: describe the image you want."
    assert service.store.count() == 0


def test_a_batch_is_one_tile_per_image_in_history_each_reusable(service):
    handlers = Handlers(service)
    done = list(handlers.generate("a fox", "", "turbo", 1, 0.0, 256, 256, 100, False, 2, [], None))
    assert "Seeds used: **100**, **101**" in done[-1][3]
    assert done[-1][0] == done[-1][4][0]["path"]  # the preview is replaced by the result
    items, count, nav, _, picks, *_ = handlers.history("", "all", False, False, None)
    assert picks["choices"] == [(f"#{nav['ids'][0][0]} · a fox", nav["ids"][0][0])]
    assert count == "1 of 1 generation" and len(items) == 2
    generation_id = nav["ids"][0][0]
    assert nav["ids"] == [[generation_id, 0], [generation_id, 1]]
    assert "1/2" in items[0][1] and "2/2" in items[1][1]
    shown = handlers.select_history(nav, gr.SelectData(None, {"index": 1, "value": None}))
    generation = service.get(generation_id)
    assert shown[1] == str(service.store.absolute(generation.images[1].path))
    assert shown[5]["value"] == shown[1]  # Download gets the image shown, not the first of the batch
    assert "101 (image 2 of 2; batch: 100, 101)" in shown[2]
    assert handlers.reuse(shown[3], {})[7] == 101  # the seed of the image reused
    assert handlers.reuse(shown[3], {})[14] == gr.skip()  # no LoRAs: their accordion is left as it is
    assert handlers.vary(shown[3], {})[7] == 102  # vary: the seeds after the batch


def test_a_cancelled_row_shows_no_seed_none(service):
    from studio.recording import record_failure

    request = GenerationRequest(prompt="stopped", width=256, height=256)
    row = record_failure(service.store, request, "cancelled", "Generation cancelled.")
    assert row.seed is None
    assert "None" not in describe(row) and "none drawn" in describe(row)
    assert "<th>Images</th><td>none kept (1 asked for)</td>" in describe(row)  # it said "1" (a hostile pass)


def test_bulk_favorite_zip_import_and_delete_through_the_handlers(service, tmp_path):
    import zipfile

    handlers = Handlers(service)
    for prompt in ("one", "two"):
        list(handlers.generate(prompt, "", "turbo", 1, 0.0, 256, 256, 5, False, 1, [], None))
    _, _, nav, *_ = handlers.history("", "all", False, False, None)
    ids = handlers.pick_all(nav)
    assert len(ids) == 2
    handlers.bulk_favorite([*ids, "3", True])  # what is not a whole id is ignored
    assert all(service.get(i).favorite for i in ids)
    archive = handlers.bulk_download(ids)["value"]
    with zipfile.ZipFile(archive) as zipped:
        assert len([n for n in zipped.namelist() if n.endswith(".png")]) == 2
    handlers.bulk_delete(ids)
    assert service.store.count() == 0
    handlers.import_history(archive)
    assert service.store.count() == 2
    with pytest.raises(gr.Error, match="Tick one or more"):
        handlers.bulk_download([])


def test_the_forms_take_defaults_and_ranges_from_the_checkpoint_specs_and_the_request(service, monkeypatch):
    """Changing a checkpoint's default steps or a request limit changes the page: nothing is restated in the UI."""
    import dataclasses

    import krea2.request
    import ui.layout
    from krea2 import TURBO
    from ui.layout import build_ui

    faster = dataclasses.replace(TURBO, default_steps=6, steps_range=(1, 40))
    monkeypatch.setitem(krea2.CHECKPOINTS, "turbo", faster)
    monkeypatch.setattr(ui.layout, "TURBO", faster)
    monkeypatch.setattr(ui.layout, "MAX_IMAGES", 3)
    blocks = list(build_ui(service).blocks.values())
    components = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    steps = components["steps"]
    assert (steps.value, steps.maximum, steps.label) == (6, 40, "Steps (recommended 6)")
    assert components["compare-raw-steps"].value == krea2.RAW.default_steps
    assert components["width"].maximum == krea2.request.MAX_SIDE and components["width"].step == 16
    assert [b.maximum for b in blocks if getattr(b, "label", None) == "Images"] == [3]


def test_a_star_toggled_shows_on_its_tile_and_the_details_stay_open(service):
    """A ★ toggled in History reloads the page it is on (not the first), so its tile shows the star without a Refresh,
    and leaves the details open; opening the tab reloads that page without closing them either (it went back to the
    first page under the second's details). A new search still hides them (the generation shown may not be among its
    results)."""
    from studio.recording import record_failure
    from studio.service import HISTORY_PAGE_SIZE

    handlers = Handlers(service)
    for number in range(HISTORY_PAGE_SIZE + 2):
        record_failure(service.store, GenerationRequest(prompt=f"row {number}", width=256, height=256), "cancelled",
                       "Generation cancelled.")  # fmt: skip
    first = handlers.history("", "all", False, False, None)
    older = handlers.history("", "all", False, False, first[2], direction="older")
    # Newer and Older are usable only where there is a page that way; the last page holds the 2 left.
    assert (first[5]["interactive"], first[6]["interactive"]) == (False, True)
    assert (older[5]["interactive"], older[6]["interactive"]) == (True, False)
    assert older[1] == f"{HISTORY_PAGE_SIZE + 1}–{HISTORY_PAGE_SIZE + 2} of {HISTORY_PAGE_SIZE + 2} generations"
    generation_id, _ = older[2]["ids"][0]
    shown = handlers.select_history(older[2], gr.SelectData(None, {"index": 0, "value": None}))
    assert shown[0]["visible"] is True
    assert handlers.toggle_favorite(shown[3]) == "★ Unfavorite"
    items, count, nav, details = handlers.history_tiles("", "all", False, False, older[2])  # the ticks left alone
    assert nav["stack"] == older[2]["stack"] and count == older[1]  # the same (second) page
    assert items[0][1].startswith(f"★ #{generation_id} ")
    assert "visible" not in details  # left as it is
    items, count, nav, details, *_ = handlers.history_reopened("", "all", False, False, nav)  # the tab opened again
    assert nav["stack"] == older[2]["stack"] and count == older[1] and "visible" not in details
    assert handlers.history("row 3", "all", False, False, nav)[3]["visible"] is False


def test_opening_the_history_tab_reloads_the_page_it_was_left_on(service):
    """The tab's select event is wired to `history_reopened` (above), not to the first page's reload."""
    from ui.layout import build_ui

    app = build_ui(service)
    tab = next(b for b in app.blocks.values() if isinstance(b, gr.Tab) and b.label == "History")
    on_select = [fn.fn for fn in app.fns.values() if (tab._id, "select") in fn.targets]
    names = {getattr(fn, "__name__", "") for fn in on_select}
    assert "history_reopened" in names and "history" not in names, names


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"checkpoint": "gpt-4"}, "checkpoint"), ({"steps": 0}, "steps"), ({"width": -5}, "width"),
     ({"seed": -5}, "seed"), ({"num_images": 99}, "num_images"), ({"prompt": "x" * 3_000_000}, "prompt"),
     ({"loras": [{"name": "../../x", "hash": "", "weight": 1.0, "checkpoint": "both"}]}, "LoRA name"),
     ({"loras": [{"name": "ink", "hash": "", "weight": 1e308, "checkpoint": "both"}]}, "LoRA weight"),
     ({"loras": [{"name": "ink", "hash": "", "weight": 1.0, "checkpoint": "nope"}]}, "LoRA target"),
     ({"prompt": "a cat <lora:ink:0.5> <|im_end|>"}, None)],
)  # fmt: skip
def test_an_import_takes_only_what_the_app_could_have_made(service, tmp_path, changes, field):
    """A hostile pass: an import took a size of -5x0, steps 0, checkpoint "gpt-4" and LoRA names with "..", which
    History then showed and Upscale refused. An entry is checked as a request of this app is (its ranges and choices),
    and refused in one sentence naming the field, before anything is written."""
    from test_store import export_of

    if field is None:  # a prompt an older version recorded as typed (today's requests take the tag out): imported
        assert service.import_archive(export_of(tmp_path / "old.zip", **changes)) == (1, 0)
        return
    with pytest.raises(Exception, match=f"^Entry 1 of history.json has an invalid {field}\\.$"):
        service.import_archive(export_of(tmp_path / "e.zip", **changes))
    assert service.store.count() == 0
    assert service.import_archive(export_of(tmp_path / "good.zip")) == (1, 0)


def test_the_status_line_is_sent_when_it_changes_and_its_timer_stops_once_all_is_loaded(service):
    """Every answer to an event makes Gradio's image editor upload its picture again: the status line's 2 s timer
    sent megabytes a minute while a picture was in the editor (a hostile pass). It now answers with nothing when the
    line is unchanged, and stops once nothing is loading or warming up."""
    from krea2.manager import CheckpointStatus, ManagerStatus

    handlers = Handlers(service)
    line, shown, timer = handlers.status_tick("")
    assert line == shown == service.status_line() and timer.active is False  # the demo checkpoints are ready
    again = handlers.status_tick(shown)
    assert again[0] == gr.skip() and again[1] == shown
    loading = ManagerStatus("cpu", "cpu", True, {"turbo": CheckpointStatus("ready"), "raw": CheckpointStatus()})
    warming = ManagerStatus("cpu", "cpu", True, {"turbo": CheckpointStatus("ready")}, warmup="running")
    filtering = ManagerStatus("cpu", "cpu", True, {"turbo": CheckpointStatus("ready")},
                              content_filter="content filter: loading")  # fmt: skip
    assert not any(status.settled for status in (loading, warming, filtering))


def test_a_deleted_generation_is_no_longer_served_from_gradios_cache(service, tmp_path, monkeypatch):
    """Gradio serves a copy of each file it shows, kept for an hour: a deleted picture stayed downloadable at its old
    URL (a hostile pass). Deleting, alone or ticked, removes the copies Gradio made (by Gradio's own caching call)."""
    from pathlib import Path

    from gradio.processing_utils import save_file_to_cache
    from gradio.utils import get_upload_folder

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))
    handlers = Handlers(service)
    for seed in (1, 2, 3):
        list(handlers.generate(f"circle {seed}", "", "turbo", 1, 0.0, 256, 256, seed, False, 1, []))
    rows = sorted(service.store.page().items, key=lambda row: row.id)
    copies = {row.id: [Path(save_file_to_cache(path, get_upload_folder())) for path in handlers.files_of([row])]
              for row in rows}  # fmt: skip
    assert all(copy.is_file() for paths in copies.values() for copy in paths)
    handlers.delete([rows[0].id, 0])
    handlers.bulk_delete([rows[1].id])
    assert not any(copy.exists() for row in rows[:2] for copy in copies[row.id])
    assert all(copy.is_file() for copy in copies[rows[2].id])  # the one kept is still served


def test_history_actions_on_rows_without_their_image_say_why(service, monkeypatch):
    """A hostile pass: Upscale x2 on a cancelled row and Send to img2img on a row whose PNG was removed by hand read
    "Something went wrong (Error / FileNotFoundError)", and a History delete of a running row let the run go on to
    throw its image away. Each now says why, and the running row is kept."""
    from storage_helpers import new_generation

    handlers = Handlers(service)
    cancelled = service.store.add(new_generation("a green star", images=0, status="cancelled", error="cancelled"))
    out = list(handlers.upscale([cancelled.id, 0], 2.0, []))
    note = out[-1][1].replace("\\", "")  # Markdown-escaped on the page
    assert note == f"⚠️ Generation #{cancelled.id} has no image to upscale (it is cancelled).", note
    list(handlers.generate("one", "", "turbo", 1, 0.0, 256, 256, 5, False, 1, [], None))
    made = service.store.page().items[0]
    service.store.absolute(made.images[0].path).unlink()
    with pytest.raises(gr.Error) as gone:
        handlers.send_to_image([made.id, 0], 0.6, 8, 0, 0, 0, 0, None, None)
    assert "image file is gone from the data folder" in gone.value.message
    running = service.store.start(new_generation("still drawing", images=0).fields)
    with pytest.raises(gr.Error, match="still running"):
        handlers.delete([running.id, 0])
    shown = []
    monkeypatch.setattr(gr, "Info", shown.append)
    handlers.bulk_delete([running.id, made.id])
    assert shown == ["Deleted 1 generation. 1 still running was kept."]
    assert service.get(running.id).status == "running"


def test_a_request_before_the_checkpoints_are_ready_says_so_and_leaves_no_row(service, demo_sources):
    """The review of session s: the service deletes its own `running` row when the checkpoint is not ready, and the
    new refusal to delete running rows turned "Krea 2 Turbo is loading" into "still running; cancel it" with a row
    stuck at running until a restart."""
    from krea2.errors import NotReady

    loading = StudioService(ModelManager(PipelineLoader(demo_sources, torch.float32), demo=True), service.store)
    with pytest.raises(NotReady):
        list(loading.generate(GenerationRequest(prompt="too early", width=256, height=256), "session"))
    assert service.store.count() == 0
