"""The README's screenshots, taken from the running demo app as a visitor sees it (headless Chromium, Playwright):

    PYTHONPATH=. .venv/bin/python scripts/screenshots.py --out docs

Starts `python app.py --demo` on a free port with an empty data folder, generates the banner's first example prompt
on Turbo with seed 1 (docs/generate.png), compares it on Raw and Turbo with seed 1 (docs/compare.png), and stops the
app. The times in the pictures are this machine's: take them on an idle one. Needs Chromium (`apt-get install
chromium`) and `playwright` (in requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on a blue background"
VIEWPORT = {"width": 1280, "height": 1000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "KREA2_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen([sys.executable, "app.py", "--demo", "--port", str(port)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2):
                return app
        except OSError:
            time.sleep(0.5)
    app.kill()
    raise SystemExit("the app did not start in 120 s")


def fixed_seed(page, index: int) -> None:
    """Untick the `index`-th "Randomize seed" box (0: Generate, 1: Compare) and set its seed to 1."""
    page.get_by_label("Randomize seed").nth(index).uncheck()
    seed = page.get_by_label("Seed", exact=True).nth(index)
    seed.fill("1")
    seed.press("Enter")


def take(out: Path, url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.get_by_text("Krea 2 Turbo: ready").wait_for(timeout=120_000)
        page.get_by_role("button", name=PROMPT).click()
        fixed_seed(page, 0)
        run_and_shoot(page, "#generate-btn", page.locator("#progress").get_by_text("Done"), out / "generate.png")

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-prompt textarea").fill(PROMPT)
        fixed_seed(page, 1)
        done = page.locator("#compare-info").get_by_text("prompt encoded once")
        run_and_shoot(page, "#compare-btn", done, out / "compare.png")
        browser.close()


def run_and_shoot(page, button: str, done, path: Path) -> None:
    """Click `button`, wait for `done` to show, and take the whole page from its top."""
    page.locator(button).click()
    done.wait_for(timeout=300_000)
    page.wait_for_timeout(1000)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        app = start_app(Path(data) / "data", port)
        try:
            take(args.out.resolve(), f"http://127.0.0.1:{port}/")
        finally:
            app.terminate()
            app.wait(30)


if __name__ == "__main__":
    main()
