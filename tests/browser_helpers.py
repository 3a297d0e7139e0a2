"""The browser tests' app server and page (headless Chromium, demo checkpoints), made by one factory each: a module
gets its own server, and differs from the others only in what it puts into the data folder before the app starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from app_server import CHROMIUM, AppServer


def app_server_fixture(folder: str, prepare: Callable[[Path], None] | None = None, name: str = "server"):
    """A module-scoped `server` fixture (or `name`): `python app.py --demo` over a fresh data folder (named after
    `folder`, and filled by `prepare` first), stopped after the module; the module is skipped where Debian's chromium
    is missing."""

    @pytest.fixture(scope="module", name=name)
    def server(tmp_path_factory, demo_sources):
        if not Path(CHROMIUM).exists():
            pytest.skip("Debian chromium is not installed")
        data = tmp_path_factory.mktemp(folder) / "data"
        if prepare is not None:
            prepare(data)
        app = AppServer(data, Path(demo_sources["turbo"]).parent).start()
        yield app
        app.stop()

    return server


def page_fixture(height: int = 1000):
    """A `page` fixture: a fresh browser context (1400 px wide, `height` tall) on the module's server, once the demo
    checkpoint is ready; closed after the test."""

    @pytest.fixture(name="page")
    def page(browser, server):
        context = browser.new_context(viewport={"width": 1400, "height": height})
        page = context.new_page()
        page.goto(server.url)
        page.get_by_text("Krea 2 Turbo: ready").wait_for(timeout=60_000)
        yield page
        context.close()

    return page


def open_in_history(page, tile: str, details: str) -> None:
    """Opens the History tab, clicks the first tile whose caption shows `tile` (a caption holds the generation's id,
    checkpoint and the first 60 characters of its prompt) and checks that the details show `details` and stay open.

    A tile with that caption can only come from a reload that includes it, and the reload that opening the tab runs
    leaves open details open: under load (CI, two workers) it landed after the click and hid them."""
    page.get_by_role("tab", name="History").click()
    button = page.locator("#history-gallery button").filter(has_text=tile).first
    button.wait_for(timeout=30_000)
    button.click()
    shown = page.locator("#history-params").get_by_text(details).first
    shown.wait_for(timeout=10_000)
    page.wait_for_timeout(1_500)  # any reload still on its way lands
    assert shown.is_visible(), f"the details of the tile {tile!r} closed again"
