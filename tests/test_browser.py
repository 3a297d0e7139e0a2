"""The app as a person uses it: headless Chromium (Debian's package) driven by Playwright, demo checkpoints. The
tests share one app server; each makes the history it looks at, so they pass in any order and alone.

Screenshots land in artifacts/browser/ (look at them)."""

from __future__ import annotations

import re

import pytest
from app_server import ROOT
from browser_helpers import app_server_fixture, open_in_history, page_fixture

from storage import HistoryFilter, HistoryStore

SHOTS = ROOT / "artifacts" / "browser"

pytestmark = pytest.mark.browser


server = app_server_fixture("browser")
page = page_fixture()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def small(page) -> None:
    set_number(page, "width", 256)
    set_number(page, "height", 256)


def test_generate_shows_preview_then_gallery_image(page):
    assert page.get_by_text("Demo checkpoints in use").is_visible()
    small(page)
    page.locator("#prompt textarea").fill("a red fox in the snow")
    page.locator("#prompt textarea").press("Enter")  # Enter submits
    page.locator("#preview img").wait_for(timeout=60_000)
    page.locator("#results img").first.wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"Done.* in [\d.]+ s")).wait_for(timeout=60_000)
    assert page.get_by_text(re.compile(r"Seed used: \d+")).is_visible()
    shot(page, "01-generate")
    box, thumb = page.locator("#results").bounding_box(), page.locator("#results img").first.bounding_box()
    assert thumb["y"] + thumb["height"] <= box["y"] + box["height"], (thumb, box)  # the whole picture, not its top
    page.locator("#results img").first.click()
    page.locator("#result-details").get_by_text("a red fox in the snow").wait_for(timeout=10_000)
    assert page.get_by_role("button", name="Use these settings").is_visible()


def test_raw_toggle_shows_negative_and_keeps_each_checkpoints_settings(page):
    negative = page.locator("#negative-prompt")
    assert not negative.is_visible()
    set_number(page, "steps", 6)
    page.locator("#ckpt").get_by_text("Raw").click()
    negative.wait_for(state="visible", timeout=10_000)
    steps = page.locator("#steps input[type=number]")
    assert steps.input_value() == "52"
    assert page.locator("#guidance input[type=number]").input_value() == "3.5"
    set_number(page, "steps", 30)
    page.locator("#ckpt").get_by_text("Turbo").click()
    negative.wait_for(state="hidden", timeout=10_000)
    assert steps.input_value() == "6"  # Turbo's own value came back
    page.locator("#ckpt").get_by_text("Raw").click()
    page.wait_for_timeout(500)
    assert steps.input_value() == "30"  # and Raw's
    shot(page, "02-raw-toggle")


def test_compare_shows_two_images(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill("a lighthouse at night")
    set_number(page, "compare-width", 256)
    set_number(page, "compare-height", 256)
    set_number(page, "compare-raw-steps", 20)  # a run long enough to see the button while it lasts
    page.locator("#compare-btn").click()
    expect(page.locator("#compare-btn")).to_have_text("Comparing…", timeout=5_000)  # one click, one comparison
    expect(page.locator("#compare-btn")).to_be_disabled()
    page.locator("#compare-info").get_by_text("prompt encoded once").wait_for(timeout=120_000)
    expect(page.locator("#compare-btn")).to_be_enabled(timeout=10_000)
    assert page.locator("#compare-raw img").count() == 1
    assert page.locator("#compare-turbo img").count() == 1
    shot(page, "03-compare")


def test_cancel_stops_a_long_run(page):
    from playwright.sync_api import expect

    page.locator("#ckpt").get_by_text("Raw").click()
    # The toggle's round trip sets Raw's defaults; typing before it lands gets overwritten by steps=52.
    expect(page.locator("#steps input[type=number]")).to_have_value("52", timeout=10_000)
    set_number(page, "steps", 100)  # 512² x 100 guided steps: ~50 s on an idle core, far past the wait for "Cancelled"
    set_number(page, "width", 512)  # (1024²: each step took 4.5 s, waited out before the cancel landed)
    set_number(page, "height", 512)
    page.locator("#prompt textarea").fill("a very long run")
    page.locator("#generate-btn").click()
    page.locator("#progress").get_by_text(re.compile(r"Step \d+/100")).wait_for(timeout=60_000)
    page.locator("#cancel-btn").click()
    page.locator("#progress").get_by_text("Cancelled").wait_for(timeout=30_000)
    shot(page, "04-cancelled")


def test_png_info_then_send_to_generate(page, server):
    from gradio_client import Client

    images, _info = Client(server.url, verbose=False).predict(prompt="a png read back", steps=1, width=256,
                                                              height=256, api_name="/generate")  # fmt: skip
    png = images[0]["image"]  # the PNG as the API hands it out, metadata intact
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-file input[type=file]").set_input_files(str(png))
    parameters = page.locator("#png-parameters textarea")
    page.wait_for_function("el => el.value.includes('Seed:')", arg=parameters.element_handle(), timeout=20_000)
    prompt_line = parameters.input_value().splitlines()[0]
    shot(page, "05-png-info")
    page.locator("#png-send").click()
    page.wait_for_function(
        "([el, text]) => el.value === text", arg=[page.locator("#prompt textarea").element_handle(), prompt_line],
        timeout=10_000,
    )  # fmt: skip
    assert page.locator("#prompt textarea").is_visible()  # switched to the Generate tab


def test_history_survives_restart_then_search_and_delete(server, browser):
    from gradio_client import Client

    prompt = "a lighthouse over the harbour"
    Client(server.url, verbose=False).predict(prompt=prompt, seed=3, width=256, height=256, raw_steps=2,
                                              turbo_steps=1, api_name="/compare")  # fmt: skip
    server.stop()
    server.start()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="History").click()
    gallery = page.locator("#history-gallery")
    gallery.locator("img").first.wait_for(timeout=30_000)
    count = page.locator("#history-count")
    count.get_by_text(re.compile(r"of [1-9]\d* generations?")).wait_for(timeout=10_000)
    total = int(re.search(r"of (\d+) generations?", count.inner_text()).group(1))
    assert total >= 2  # the compare pair, from before the restart
    page.wait_for_timeout(1500)  # let the reload that opening the tab triggers finish
    shot(page, "06-history")

    page.locator("#history-search textarea, #history-search input").first.fill("harbour")
    page.locator("#history-search textarea, #history-search input").first.press("Enter")
    count.get_by_text("of 2 generations").wait_for(timeout=10_000)
    shot(page, "06-history-search")

    gallery.locator("img").first.click()
    page.locator("#history-params").get_by_text(prompt).wait_for(timeout=10_000)
    assert page.locator("#history-image img").count() == 1
    page.locator("#history-favorite").click()
    page.get_by_role("button", name="★ Unfavorite").wait_for(timeout=10_000)
    gallery.locator("button", has_text="★ #").first.wait_for(timeout=10_000)  # the tile shows it, no Refresh needed
    assert page.locator("#history-params").get_by_text(prompt).is_visible()  # and the details stay open
    with page.expect_download(timeout=20_000) as download:
        page.locator("#history-download").click()
    assert download.value.suggested_filename.endswith(".png")
    page.locator("#history-delete").click()
    page.locator("#history-confirm-delete").click()
    count.get_by_text("of 1 generation").wait_for(timeout=10_000)
    shot(page, "07-history-deleted")

    gallery.locator("img").first.click()
    page.locator("#history-params").get_by_text(prompt).wait_for(timeout=10_000)
    page.locator("#history-reuse").click()
    page.wait_for_function(
        "([el, text]) => el.value === text", arg=[page.locator("#prompt textarea").element_handle(), prompt],
        timeout=10_000,
    )  # fmt: skip
    shot(page, "08-reused")
    context.close()


def test_history_shows_markup_in_a_prompt_as_text(server, browser):
    """A prompt with an <img> tag and a Markdown image must be shown as typed, and no viewer's browser may fetch."""
    import socket
    import threading

    from gradio_client import Client

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    port, hits, stop = listener.getsockname()[1], [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                hits.append(listener.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    prompt = f'<img src="http://127.0.0.1:{port}/pixel.png"> ![pixel](http://127.0.0.1:{port}/md.png) & **bold**'
    try:
        Client(server.url, verbose=False).predict(prompt=prompt, steps=1, width=256, height=256, api_name="/generate")
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(server.url)
        open_in_history(page, prompt[:30], prompt)  # the very characters typed
        assert page.locator("#history-params img").count() == 0
        assert page.locator("#history-params strong").count() == 0
        page.wait_for_timeout(1000)
        shot(page, "09-history-markup-as-text")
        context.close()
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert hits == []  # nothing fetched the "tracking pixel"


def test_start_from_an_uploaded_image_then_send_a_result_back(page, server, tmp_path):
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    init = tmp_path / "init.png"
    Image.new("RGB", (256, 256), (230, 200, 20)).save(init)
    page.get_by_text("Start from an image").first.click()
    # As a person does: drop the file once the editor shows its upload area (an input set before the editor has
    # mounted is lost), and see the note under it say the picture arrived before changing anything else.
    set_number(page, "feather", 0)  # as "reuse settings" leaves it: a new picture brings the default back
    editor = page.locator("#init-image")
    editor.get_by_text("Upload an image").wait_for(timeout=30_000)
    editor.locator("canvas").first.wait_for(state="attached", timeout=30_000)  # the editor's drawing surface is up
    for attempt in range(3):
        # Seen on this 2-core machine under the full suite (2026-12-02, not explained): the editor, drawn by software
        # WebGL here, sometimes never showed a file set into it. A person would drop the file again; so does the test.
        editor.locator("input[type=file]").set_input_files(str(init))
        try:
            editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=15_000)  # the picture is in
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.wait_for_function("el => el.value === '8'", arg=page.locator("#feather input[type=number]").element_handle(),
                           timeout=10_000)  # fmt: skip
    # The note says what Generate will do with the picture as soon as it is there, with no other control touched
    # (the editor's change event came before the picture, empty, and the note stayed empty until one was: the upload
    # event now says it too), and again when the strength changes.
    note = page.locator("#init-note")
    note.get_by_text("Init image 256×256: img2img at strength 0.60, generated at 256×256.").wait_for(timeout=20_000)
    page.locator("#prompt textarea").fill("a red circle from an image")
    set_number(page, "strength", 0.5)
    note.get_by_text("Init image 256×256: img2img at strength 0.50, generated at 256×256.").wait_for(timeout=20_000)
    page.locator("#generate-btn").click()
    page.get_by_text("Image input: generated at 256×256.").wait_for(timeout=120_000)  # behind earlier jobs
    shot(page, "08-img2img")
    # A picture in the editor is not uploaded again while the page is idle: each answer to an event makes Gradio's
    # editor upload it again, and the status line's timer (stopped once everything is loaded) answered every 2 s.
    page.wait_for_timeout(2_000)  # the generation's last events
    uploads = []
    page.on("request", lambda request: uploads.append(request.url) if "/upload" in request.url else None)
    page.wait_for_timeout(6_000)
    assert uploads == [], uploads
    page.locator("#results img").first.click()
    page.locator("#send-btn").click()  # the result becomes the next init image
    page.locator("#upscale-2-btn").click()  # and the hi-res pass runs on it
    page.get_by_text("Image input: upscaled ×2 to 512×512.").wait_for(timeout=120_000)
    # The editor holds the result as it is (PNG): Generate from it starts from exactly its pixels, where Gradio's
    # default WebP changed them by up to ~50 levels and inpaint's "unchanged" pixels were not.
    page.locator("#prompt textarea").fill("a red circle from the sent result")
    page.locator("#generate-btn").click()
    store = HistoryStore(server.data_dir).open(repair=False)
    try:
        for _ in range(240):  # the run behind any earlier one
            started = store.page(limit=1, filters=HistoryFilter(text="from the sent result")).items
            if started and started[0].status == "ok":
                break
            page.wait_for_timeout(500)
        [started] = started
        rows = store.page(limit=10, filters=HistoryFilter(text="a red circle from an image")).items
        sent = min(rows, key=lambda row: row.id)  # the img2img result that was sent (then upscaled: a later row)
        result = Image.open(store.absolute(sent.images[0].path)).convert("RGB")
        source = Image.open(store.absolute(store.source_relative(started.source_sha256))).convert("RGB")
    finally:
        store.close()
    assert list(result.getdata()) == list(source.getdata())


def upload_red_picture(page, tmp_path) -> None:
    """A 320x256 picture dropped into the editor as soon as it is up, and the note under it waited for."""
    from PIL import Image

    Image.new("RGB", (320, 256), (200, 30, 30)).save(tmp_path / "red.png")
    page.get_by_text("Start from an image").first.click()
    editor = page.locator("#init-image")
    editor.get_by_text("Upload an image").wait_for(timeout=30_000)
    editor.locator("canvas").first.wait_for(state="attached", timeout=30_000)
    editor.locator("input[type=file]").set_input_files(str(tmp_path / "red.png"))
    note = page.locator("#init-note")
    note.get_by_text("Init image 320×256: img2img at strength 0.60, generated at 320×256.").wait_for(timeout=20_000)


def test_the_note_under_the_editor_says_an_uploaded_picture_is_in_with_nothing_else_touched(page, tmp_path):
    """A picture dropped into the editor as soon as it is up, and nothing else done: the note under it says what
    Generate will do with it. The editor's change event came before the picture, empty, and none followed (Gradio
    6.31 in Chromium: 5 uploads of 5 dropped this early, about 1 in 4 a second later), so the note stayed empty until
    another control changed; its upload event now says it too."""

    upload_red_picture(page, tmp_path)
    shot(page, "08a-note-after-upload")


def test_the_note_under_the_editor_follows_a_picture_sent_reused_or_read_from_a_png(page, server, tmp_path):
    """History's Send to img2img, Reuse settings and PNG info's Send to Generate put a picture into the editor, and
    the note under it says what Generate will do with it, with no control touched after. Left to the editor's events
    (Gradio 6.31, Chromium), the note kept the picture before's: sent into an editor holding an uploaded 320x256
    picture, it still said 320x256 (4 runs of 4), and after the reuse it kept the strength before (about 1 run in 6);
    the handlers that put the picture in now say it. The strength is set between the steps so that each one's note
    (0.60 or the recorded 0.55) differs from the last."""
    from gradio_client import Client, handle_file
    from PIL import Image

    Image.new("RGB", (256, 256), (30, 90, 200)).save(tmp_path / "init.png")
    prompt = "an img2img whose picture goes back to the editor"
    images, _info = Client(server.url, verbose=False).predict(prompt=prompt, steps=1, width=256, height=256,
                                                              image=handle_file(str(tmp_path / "init.png")),
                                                              strength=0.55, api_name="/generate")  # fmt: skip
    note = page.locator("#init-note")

    def says(strength: str) -> None:
        text = f"Init image 256×256: img2img at strength {strength}, generated at 256×256."
        note.get_by_text(text).wait_for(timeout=20_000)

    # Into an editor that holds a picture of another size, as a person does after trying one of their own.
    upload_red_picture(page, tmp_path)
    open_in_history(page, prompt[:30], prompt)
    page.locator("#history-send").click()  # the result, at the strength the slider has
    says("0.60")
    set_number(page, "strength", 0.3)
    says("0.30")
    page.get_by_role("tab", name="History").click()
    page.locator("#history-reuse").click()  # the picture it started from, at its strength
    says("0.55")
    shot(page, "08b-note-after-reuse")
    set_number(page, "strength", 0.3)
    says("0.30")
    page.get_by_role("tab", name="PNG info").click()
    page.locator("#png-file input[type=file]").set_input_files(str(images[0]["image"]))
    parameters = page.locator("#png-parameters textarea")
    page.wait_for_function("el => el.value.includes('Seed:')", arg=parameters.element_handle(), timeout=20_000)
    page.locator("#png-send").click()  # the picture it started from again, from this app's data folder
    says("0.55")


def test_a_value_out_of_range_is_one_line_and_generate_works_again(page):
    """Seed -1 (another tool's "random") is refused in one sentence on the progress line, and the Generate button
    comes back for the next try, with the seed put right (a hostile pass found it left disabled until a reload)."""
    small(page)
    page.get_by_label("Randomize seed").first.uncheck()
    set_number(page, "seed", -1)
    page.locator("#prompt textarea").fill("a red circle on a blue background")
    page.locator("#generate-btn").click()
    page.locator("#progress").get_by_text(re.compile(r"seed must be between 0 and \d+ \(it is -1\)")).wait_for(
        timeout=30_000
    )
    button = page.locator("#generate-btn")
    page.wait_for_function("el => !el.disabled", arg=button.element_handle(), timeout=10_000)
    shot(page, "09-seed-out-of-range")
    set_number(page, "seed", 7)
    button.click()
    page.get_by_text(re.compile(r"Done.* in [\d.]+ s")).wait_for(timeout=60_000)
    assert page.get_by_text("Seed used: 7").is_visible()


def test_upscale_from_history_holds_generate_until_it_is_done(page, server):
    """History's "Upscale x2" runs on the Generate tab like Generate itself: every button that starts such a run
    (Generate, Vary, the Upscales, History's own) is held while the pass runs (a hostile pass found them clickable, a
    second run queued behind the first) and back when it is done. Enter in the prompt box, which no held button stops,
    starts nothing meanwhile (it used to queue a run, whose end then gave the buttons back early)."""
    small(page)
    page.locator("#prompt textarea").fill("a yellow star on a purple background")
    page.locator("#generate-btn").click()
    page.get_by_text(re.compile(r"Done.* in [\d.]+ s")).wait_for(timeout=60_000)
    open_in_history(page, "a yellow star on a purple background", "a yellow star on a purple background")
    page.locator("#history-upscale").click()
    held = [page.locator(f"#{name}").element_handle() for name in ("generate-btn", "history-upscale")]
    page.wait_for_function("els => els.every(el => el.disabled)", arg=held, timeout=10_000)  # every run button
    page.locator("#prompt textarea").fill("a blue square pressed while held")
    page.locator("#prompt textarea").press("Enter")
    page.wait_for_timeout(300)
    shot(page, "10-enter-while-held")  # no toast, no error badge: the run in flight goes on as it was
    page.locator("#progress").get_by_text(re.compile(r"upscaled ×2 to 512×512")).wait_for(timeout=90_000)
    page.wait_for_function("els => els.every(el => !el.disabled)", arg=held, timeout=10_000)
    page.wait_for_timeout(2_000)  # a queued run would have started by now
    store = HistoryStore(server.data_dir).open(repair=False)
    try:
        assert not store.page(limit=10, filters=HistoryFilter(text="pressed while held")).items
    finally:
        store.close()
    assert page.locator("#prompt textarea").input_value() == "a blue square pressed while held"  # kept for later
