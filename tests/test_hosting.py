"""Issue 18, end to end: the content filter's default follows where the app can be reached (and the Docker image and
Spaces have it on), fail-closed, and a blocked generation is unobtainable by every route (page handlers, Compare, the
API, the CLI): no file on disk, nothing in the response, the preview or the thumbnails, a `blocked` row. The
classifier is the tiny one of tests/filter_helpers.py, which flags the demo model's red backgrounds."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from api_helpers import call, files_in, one_sentence
from app_server import ROOT, AppServer
from filter_helpers import build_red_flagging_classifier
from PIL import Image
from test_archive_sources import rewritten
from test_content_filter import is_mosaic

import app
from krea2.content_filter import ContentPolicy, ImageClassifierFilter, PromptBlocklist
from krea2.errors import ContentBlocked, FilterUnavailable
from storage import HistoryStore
from storage.files import encode_png, png_address
from storage.provenance import read_provenance
from studio.safety import content_policy, is_loopback
from studio.service import StudioService
from studio.settings import SettingError, load_settings
from ui.attribution import NOTICE
from ui.handlers import CHECKPOINT_CHOICES, Handlers

RED = "a white circle on a red background"  # the classifier flags it
BLUE = "a red circle on a blue background"  # it does not (red shape, blue background)
SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="session")
def red_classifier(tmp_path_factory) -> str:
    return str(build_red_flagging_classifier(tmp_path_factory.mktemp("red-classifier")))


# ------------------------------------------------------------------------------------------------ when it is on
@pytest.mark.parametrize(
    ("environ", "required"),
    [
        ({}, False),  # 127.0.0.1: on when its model loads, not enforced
        ({"KREA2_HOST": "localhost"}, False),
        ({"KREA2_HOST": "::1"}, False),
        ({"KREA2_HOST": "0.0.0.0"}, True),
        ({"KREA2_HOST": "::"}, True),
        ({"KREA2_HOST": "192.168.1.20"}, True),
        ({"KREA2_HOST": "studio.example.com"}, True),  # a name may resolve outside: reachable
        ({"SPACE_ID": "someone/krea2-studio"}, True),  # a Space binds 0.0.0.0
        ({"KREA2_ALLOWED_ORIGINS": "https://studio.example.com"}, True),  # loopback behind a public reverse proxy
        ({"KREA2_ALLOWED_ORIGINS": "http://localhost:8080"}, False),
        ({"KREA2_CONTENT_FILTER": "on"}, True),  # asked for explicitly: enforced locally too
    ],
)
def test_the_filter_is_on_by_default_and_required_beyond_loopback(environ, required):
    policy = content_policy(load_settings(environ))
    assert policy.classifier is not None and policy.classifier.source == "Falconsai/nsfw_image_detection"
    assert policy.classifier.blocking_labels == ("nsfw",) and policy.classifier.threshold == 0.5
    assert policy.required is required


def test_loopback_names():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "app.localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""))


def test_only_a_loopback_app_may_turn_it_off(capsys):
    policy = content_policy(load_settings({"KREA2_CONTENT_FILTER": "off"}))
    assert policy.classifier is None
    assert policy.status() == "content filter: off (turned off with KREA2_CONTENT_FILTER=off, loopback only)"
    for environ in ({"KREA2_HOST": "0.0.0.0"}, {"SPACE_ID": "someone/space"}):
        with pytest.raises(SettingError, match="KREA2_CONTENT_FILTER=off is refused"):
            content_policy(load_settings({**environ, "KREA2_CONTENT_FILTER": "off"}))
    # The app stops at start-up with one line and exit 2, before anything loads.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KREA2_CONTENT_FILTER", "off")
        assert app.main(["--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: KREA2_CONTENT_FILTER=off is refused") and len(err.splitlines()) == 1


def docker_environment() -> dict[str, str]:
    """The ENV the Dockerfile sets (`ENV A=1 \\ B=2` lines)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = [word for line in text.splitlines() if line.startswith("ENV ") for word in line[4:].split()]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_docker_image_and_spaces_ship_with_it_required():
    environ = docker_environment()
    assert environ["KREA2_CONTENT_FILTER"] == "on" and not is_loopback(environ["KREA2_HOST"])
    assert content_policy(load_settings(environ)).required
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n") and "app_file: app.py" in readme  # the Space runs app.py, which reads SPACE_ID
    assert content_policy(load_settings({"SPACE_ID": "someone/space", "SPACES_ZERO_GPU": "1"})).required


def test_filter_settings_are_read_strictly(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("re:(broken\n")
    with pytest.raises(SettingError, match="KREA2_PROMPT_BLOCKLIST: Line 1"):
        content_policy(load_settings({"KREA2_PROMPT_BLOCKLIST": str(listing)}))
    with pytest.raises(SettingError, match="KREA2_PROMPT_BLOCKLIST must be an existing file"):
        load_settings({"KREA2_PROMPT_BLOCKLIST": str(tmp_path / "missing.txt")})
    settings = load_settings({"KREA2_FILTER_LABELS": "nsfw, gore", "KREA2_FILTER_THRESHOLD": "0.8"})
    assert settings.filter_labels == ("nsfw", "gore") and settings.filter_threshold == 0.8
    for name, value in (("KREA2_FILTER_THRESHOLD", "1.5"), ("KREA2_FILTER_LABELS", "nsfw;drop table")):
        with pytest.raises(SettingError, match=f"{name} must"):
            load_settings({name: value})


# ------------------------------------------------------------------------------------------------ page handlers
@contextlib.contextmanager
def service_with(manager, tmp_path: Path, policy: ContentPolicy):
    policy.load(manager.device)
    previous, manager.content_policy = manager.content_policy, policy
    store = HistoryStore(tmp_path / "data").open()
    try:
        yield StudioService(manager, store)
    finally:
        manager.content_policy = previous
        store.close()


def filtering(source: str, **fields) -> ContentPolicy:
    return ContentPolicy(ImageClassifierFilter(source, ("nsfw",), 0.5), required=True, **fields)


def run_generate(handlers: Handlers, prompt: str, num_images: int = 1) -> list[tuple]:
    # prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, num_images, items, request
    return list(handlers.generate(prompt, "", "turbo", 8, 0.0, 256, 256, 3, False, num_images, [], None))


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_generate_tab_blocked_image_reaches_nothing(manager, tmp_path, red_classifier, monkeypatch):
    monkeypatch.setattr("ui.handlers.display_preview", lambda preview: preview)  # the previews as the engine sent them
    with service_with(manager, tmp_path, filtering(red_classifier)) as service:
        handlers = Handlers(service)
        assert "content filter: on (" in service.status_line()
        outputs = run_generate(handlers, RED)
        preview, note, gallery, seed_text, items = outputs[-1]
        assert preview is None and note.startswith("⚠️ The content filter flagged this image as nsfw")
        assert is_skip(gallery) and is_skip(seed_text) and is_skip(items)
        previews = [out[0] for out in outputs[:-1] if isinstance(out[0], Image.Image)]
        assert len(previews) == 8 and all(is_mosaic(p) for p in previews)  # every step's, the last ones' too
        assert files_in(service.store.data_dir) == set()  # no image, no thumbnail
        [row] = service.store.page().items
        assert (row.status, row.images, row.seed) == ("blocked", [], 3) and "flagged this image" in row.error
        gallery_items, count, *_ = handlers.history("", "all", False, False, None)
        assert gallery_items[0][0] == str(service.placeholder)
        assert "· Krea 2 Turbo · blocked" in gallery_items[0][1] and count == "1 of 1 generation"

        # The same page, an image the filter passes: saved, shown, and disclosed as AI-generated.
        preview, _note, gallery, _seed, items = run_generate(handlers, BLUE)[-1]
        assert Path(preview).is_file() and len(gallery) == 1
        assert read_provenance(preview)["ai_generated"]
        assert len(files_in(service.store.data_dir)) == 2  # its PNG and its thumbnail


def test_compare_tab_blocked_image_reaches_nothing(manager, tmp_path, red_classifier):
    with service_with(manager, tmp_path, filtering(red_classifier)) as service:
        handlers = Handlers(service)
        # prompt, negative, seed, randomize, width, height, raw_steps, raw_guidance, turbo_steps, request
        outputs = list(handlers.compare(RED, "", 3, False, 256, 256, 8, 3.5, 8, None))
        note, raw, turbo, pair, info = outputs[-1]
        assert note.startswith("⚠️ The content filter flagged") and all(map(is_skip, (raw, turbo, pair, info)))
        assert not any(isinstance(value, str) and value.endswith(".png") for out in outputs for value in out)
        assert files_in(service.store.data_dir) == set()
        rows = service.store.page().items
        assert [row.status for row in rows] == ["blocked"] and rows[0].comparison_id  # Raw blocked, Turbo never ran


def test_a_blocked_prompt_leaves_a_blocked_row_and_never_runs(manager, tmp_path, red_classifier):
    policy = filtering(red_classifier, blocklist=PromptBlocklist.from_text("fox\nre:b[a4]d"))
    with service_with(manager, tmp_path, policy) as service:
        outputs = run_generate(Handlers(service), "a b4d red circle")
        assert not any(isinstance(out[0], Image.Image) for out in outputs)  # no step ran: no preview at all
        assert outputs[-1][1].startswith("⚠️ This prompt matches entry 2 of the server")
        [row] = service.store.page().items
        assert (row.status, row.images) == ("blocked", []) and files_in(service.store.data_dir) == set()


def test_fail_closed_refuses_with_how_to_fix_and_leaves_no_row(manager, tmp_path, caplog):
    policy = content_policy(load_settings({"KREA2_FILTER_MODEL": str(tmp_path / "no-classifier-here"),
                                           "KREA2_CONTENT_FILTER": "on"}))  # fmt: skip
    with service_with(manager, tmp_path, policy) as service:
        status = service.status_line()
        assert "content filter: FAILED, generation refused" in status
        note = run_generate(Handlers(service), BLUE)[-1][1]
        assert "required content filter is unavailable: the classifier folder" in note and "does not exist" in note
        # The folder by its last part only: the server's path is the host's, and the log line names it whole.
        assert "…/no-classifier-here" in note and str(tmp_path) not in note and str(tmp_path) not in status
        assert any(str(tmp_path / "no-classifier-here") in record.getMessage() for record in caplog.records)
        assert "KREA2\\_FILTER\\_MODEL" in note  # how to fix it (Markdown-escaped on the page)
        assert "KREA2\\_CONTENT\\_FILTER=off" in note  # on loopback it may be turned off instead (Markdown-escaped)
        assert service.store.count() == 0 and files_in(service.store.data_dir) == set()


def test_names_and_notice_on_the_page():
    assert [label for label, _ in CHECKPOINT_CHOICES] == ["Krea 2 Turbo", "Krea 2 Raw"]
    assert NOTICE in (ROOT / "NOTICE").read_text() and NOTICE in (ROOT / "README.md").read_text()
    assert "Built with Krea 2" in (ROOT / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ API and page
@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_sources):
    folder = tmp_path_factory.mktemp("api-filter")
    classifier = build_red_flagging_classifier(folder / "classifier")
    env = {"KREA2_FILTER_MODEL": str(classifier), "KREA2_CONTENT_FILTER": "on"}
    started = AppServer(folder / "data", Path(demo_sources["turbo"]).parent, extra_env=env).start()
    yield started
    started.stop()


def body(prompt: str) -> str:
    return json.dumps({"data": [prompt, "turbo", "", 8, "", 256, 256, 3, 1]})


def test_the_api_never_returns_a_blocked_image(server):
    kind, message = call(server.url, "generate", body(RED))
    assert kind == "error" and one_sentence(message) and message.startswith("The content filter flagged")
    assert files_in(server.data_dir) == set()
    kind, page = call(server.url, "history", json.dumps({"data": ["", "all", False, False, "", 10]}))
    [row] = page[0]["items"]
    assert (row["status"], row["images"]) == ("blocked", 0) and row["error"] == message
    kind, data = call(server.url, "generate", body(BLUE))
    assert kind == "complete" and len(data[0]) == 1
    [png] = [path for path in files_in(server.data_dir) if path.suffix == ".png"]
    assert read_provenance(png)["xmp"]["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")


def test_every_page_carries_the_notice_and_the_filter_status(server):
    with urllib.request.urlopen(server.url + "config", timeout=30) as response:
        config = response.read().decode()
    assert "Built with Krea 2" in config and "Krea 2 Community License Agreement" in config
    assert "https://krea.ai/krea-2-licensing" in config and "Krea 2 Turbo" in config


# ------------------------------------------------------------------------------------------------ CLI
def test_the_cli_writes_nothing_for_a_blocked_image(tmp_path, demo_sources, red_classifier):
    env = {**os.environ, "KREA2_DATA_DIR": str(tmp_path / "data"), "KREA2_FILTER_MODEL": red_classifier,
           "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent), "KREA2_CONTENT_FILTER": "on"}  # fmt: skip
    out = tmp_path / "out.png"
    args = ["--demo", "--seed", "3", "--width", "256", "--height", "256", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", RED, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().startswith("error: The content filter flagged") and done.stdout == ""
    assert not out.exists() and files_in(tmp_path / "data") == set()
    [row] = HistoryStore(tmp_path / "data").open().page().items
    assert (row.status, row.images, row.seed) == ("blocked", [], 3)

    done = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", BLUE, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_provenance(out)["ai_generated"] and json.loads(done.stdout)["path"] == str(out)


def test_the_cli_fails_closed_and_refuses_a_blocked_prompt_before_loading(tmp_path, capsys):
    from krea2.quiet import quiet_libraries
    from studio import cli

    quiet_libraries()  # in-process, as `python -m studio` does first (no progress bars on stderr)

    listing = tmp_path / "list.txt"
    listing.write_text("circle\n")
    environ = {"KREA2_DATA_DIR": str(tmp_path / "data"), "KREA2_PROMPT_BLOCKLIST": str(listing)}
    args = cli.build_parser().parse_args(["generate", "--demo", "--prompt", "a red circle", "--width", "256",
                                          "--height", "256"])  # fmt: skip
    assert cli.run(args, environ=environ) == 3
    assert capsys.readouterr().err.startswith("error: This prompt matches entry 1")
    [row] = HistoryStore(tmp_path / "data").open().page().items
    assert row.status == "blocked"
    environ = {"KREA2_DATA_DIR": str(tmp_path / "data2"), "KREA2_FILTER_MODEL": str(tmp_path / "nothing"),
               "KREA2_CONTENT_FILTER": "on"}  # fmt: skip
    args = cli.build_parser().parse_args(["generate", "--demo", "--prompt", BLUE, "--width", "256", "--height", "256"])
    assert cli.run(args, environ=environ) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required content filter is unavailable" in err[0]
    assert HistoryStore(tmp_path / "data2").open().count() == 0 and files_in(tmp_path / "data2") == set()


# ------------------------------------------------------------------------------------------------ history imports
RED_SOURCE = Image.new("RGB", (256, 256), (220, 20, 20))  # an init image the classifier flags


def hostile_copy(name: str, data: bytes) -> bytes:
    """An export's member as a hostile copy has it: its fourth entry `blocked`, its first (BLUE) naming a red init
    image (added to the zip by the test), every PNG without its text chunks."""
    if name == "history.json":
        document = json.loads(data)
        document["generations"][3]["status"] = "blocked"
        document["generations"][0].update(mode="img2img", strength=0.5, source_sha256=png_address(RED_SOURCE))
        return json.dumps(document).encode()
    if name.startswith("images/"):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")  # the pixels only
        return buffer.getvalue()
    return data


def test_an_imported_history_meets_the_content_policy_and_says_it_is_ai_generated(manager, tmp_path, red_classifier):
    """A hostile pass imported red pictures, a blocked prompt and a `blocked` row with its image onto a filtering
    server: all were stored and served, without the AI disclosure. Now the import applies the policy as a generation
    does (blocked rows keep no image and no init image), and a PNG without the disclosure gets it, pixels unchanged."""
    with service_with(manager, tmp_path / "elsewhere", ContentPolicy()) as unfiltered:  # another install, no filter
        for prompt in (BLUE, RED, "a fox circle on a blue background", "a yellow star on a blue background"):
            run_generate(Handlers(unfiltered), prompt)
        export, _count = unfiltered.export()
    hostile = rewritten(export, tmp_path / "hostile.zip", hostile_copy)
    with zipfile.ZipFile(hostile, "a") as adding:
        adding.writestr(f"sources/{png_address(RED_SOURCE)}.png", encode_png(RED_SOURCE, None))
    policy = filtering(red_classifier, blocklist=PromptBlocklist.from_text("fox"))
    with service_with(manager, tmp_path / "host", policy) as host:
        assert host.import_archive(hostile) == (4, 0)
        rows = {row.prompt: row for row in host.store.page().items}
        fox = rows["a fox circle on a blue background"]
        assert [row.status for row in (rows[BLUE], rows[RED], fox)] == ["ok", "blocked", "blocked"]
        assert rows[RED].images == [] and "flagged an imported image as nsfw" in rows[RED].error
        assert fox.images == [] and "entry 1 of the server's block list" in fox.error
        star = rows["a yellow star on a blue background"]
        assert (star.status, star.images) == ("blocked", [])  # blocked in the archive: its image stays out
        assert len(files_in(host.store.data_dir)) == 2  # BLUE's PNG and thumbnail, nothing else
        assert not (host.store.data_dir / "sources").exists() or not any((host.store.data_dir / "sources").rglob("*"))
        assert (rows[BLUE].source_sha256, rows[BLUE].mode) == (None, "img2img")  # the flagged init image left out
        [image] = rows[BLUE].images
        png = host.store.absolute(image.path)
        assert read_provenance(png)["ai_generated"]  # the disclosure the stripped PNG lacked, added back
        with zipfile_member(export, "images/000001-0.png") as original:
            assert list(Image.open(png).getdata()) == list(original.getdata())  # the same pixels

    settings = load_settings({"KREA2_FILTER_MODEL": str(tmp_path / "none"), "KREA2_CONTENT_FILTER": "on"})
    with service_with(manager, tmp_path / "closed", content_policy(settings)) as closed:
        with pytest.raises(FilterUnavailable, match="The import is refused because the required content filter"):
            closed.import_archive(export)
        assert closed.store.count() == 0


@contextlib.contextmanager
def zipfile_member(archive: Path, name: str):
    with zipfile.ZipFile(archive) as opened:
        yield Image.open(io.BytesIO(opened.read(name)))


def test_a_blocked_generation_keeps_no_init_image(manager, tmp_path, red_classifier):
    """A blocked img2img kept its upload in sources/, and History showed and exported it beside the blocked row (a
    hostile pass). The row now names none, and the file goes unless another row names it."""
    from krea2 import GenerationRequest
    from studio.sources import image_source

    with service_with(manager, tmp_path, filtering(red_classifier)) as service:
        red = image_source(Image.new("RGB", (256, 256), (220, 20, 20)), strength=1.0).source  # RED's own picture
        request = GenerationRequest(prompt=RED, seed=3, steps=8, source=red, **SMALL)
        with pytest.raises(ContentBlocked):
            list(service.generate(request, "page"))
        [row] = service.store.page().items
        assert (row.status, row.source_sha256, row.mode) == ("blocked", None, "img2img")
        assert files_in(service.store.data_dir) == set()  # no image, no thumbnail, no init image


def test_a_run_finished_after_a_repair_marked_it_interrupted_loses_that_error(tmp_path):
    """A second server's start-up repair marked a running row interrupted; when the first finished it, the row said
    `ok` with "The server stopped before this generation finished". On one machine the folder lock now keeps a
    second server from repairing (storage/folder_lock.py); a replica on another machine, sharing the database, still
    does (its repair is called here directly, as the lock cannot see it)."""
    from storage.records import NewGeneration
    from tests.storage_helpers import new_generation

    store = HistoryStore(tmp_path / "data").open()
    try:
        running = store.start(new_generation("long run", seed=1).fields)
        second = HistoryStore(tmp_path / "data").open()
        assert second.repair_report is None and store.get(running.id).status == "running"  # not alone: no repair
        second.repair()  # as a replica elsewhere would: it marks the row
        second.close()
        assert store.get(running.id).error
        store.finish(running.id, NewGeneration({"status": "ok"}))
        assert (store.get(running.id).status, store.get(running.id).error) == ("ok", None)
    finally:
        store.close()
