"""The LoRA picker as a person uses it (headless Chromium, demo checkpoints): a LoRA dropped into the folder, picked
in the Generate tab, seen in the result's details; Compare without vs with it. Screenshots in artifacts/browser/."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser_helpers import app_server_fixture, page_fixture
from lora_helpers import random_factors, write_lora
from PIL import Image
from test_browser import set_number, shot

from krea2.demo import build_transformer

pytestmark = pytest.mark.browser


def ink_in_the_lora_folder(data: Path) -> None:
    write_lora(data / "loras" / "styles" / "ink.safetensors", random_factors(build_transformer(), seed=7), "kohya")


server = app_server_fixture("browser-loras", prepare=ink_in_the_lora_folder)
page = page_fixture(height=1400)


def pick_lora(page, prefix: str, name: str, weight: float) -> None:
    page.locator(f"#{prefix}-loras").get_by_text("LoRAs").first.click()  # open the accordion
    page.locator(f"#{prefix}-lora-1 input").click()
    page.get_by_role("option", name=name).click()
    set_number(page, f"{prefix}-lora-1-weight", weight)


def test_a_lora_from_the_folder_is_picked_used_and_recorded(page):
    set_number(page, "width", 256)
    set_number(page, "height", 256)
    set_number(page, "steps", 2)
    pick_lora(page, "generate", "styles/ink", 0.8)
    page.locator("#prompt textarea").fill("a red circle on a blue background")
    page.locator("#generate-btn").click()
    page.locator("#seed-used").get_by_text(re.compile(r"LoRAs styles/ink 0\.8")).wait_for(timeout=120_000)
    shot(page, "loras-01-generate")
    page.locator("#results img").first.click()
    page.locator("#result-details").get_by_text(re.compile(r"styles/ink 0\.8 \(hash [0-9a-f]{12}\)")).wait_for(
        timeout=10_000
    )
    # Settings used again with their LoRAs open the closed accordion: what the next run takes is in sight.
    page.locator("#generate-loras").get_by_text("LoRAs").first.click()  # closed
    page.locator("#generate-lora-1").wait_for(state="hidden", timeout=10_000)
    page.locator("#reuse-btn").click()
    page.locator("#generate-lora-1").wait_for(state="visible", timeout=10_000)
    assert page.locator("#generate-lora-1 input").input_value() == "styles/ink"


def test_compare_without_and_with_a_lora(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill("a yellow star")
    set_number(page, "compare-width", 256)
    set_number(page, "compare-height", 256)
    assert not page.locator("#compare-lora-checkpoint").is_visible()  # it means nothing in Raw ↔ Turbo
    page.locator("#compare-mode").get_by_text("Without ↔ with LoRAs").click()
    page.locator("#compare-lora-checkpoint").wait_for(state="visible", timeout=10_000)
    pick_lora(page, "compare", "styles/ink", 1.0)
    page.locator("#compare-btn").click()
    page.locator("#compare-info").get_by_text("Turbo with LoRAs").wait_for(timeout=120_000)
    assert page.locator("#compare-raw img").count() == 1 and page.locator("#compare-turbo img").count() == 1
    shot(page, "loras-02-compare")


def test_the_demo_lora_shows_on_raw_and_turbo_side_by_side(page):
    """Issue 16's "done when", as a visitor of the demo app does it: pick the demo style LoRA (listed without being
    put in any folder), run Compare Raw ↔ Turbo with it, and both pictures are in its pixel style (measured on the
    files the page shows). One seed: on this prompt, seeds 0-3, the measure ranged 0.37-0.47 with the LoRA at 0.8,
    against 0.14-0.20 without, on both checkpoints (this CPU, the checkpoints of 2026-12-06)."""
    from demo.score import grid_edge_share

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill("a red circle on a blue background")
    set_number(page, "compare-width", 256)
    set_number(page, "compare-height", 256)
    page.get_by_label("Randomize seed").last.uncheck()  # Compare's (Generate's comes first)
    set_number(page, "compare-seed", 0)
    pick_lora(page, "compare", "demo/pixel-style", 0.8)
    page.locator("#compare-btn").click()
    page.locator("#compare-info").get_by_text(re.compile("pixel-style")).first.wait_for(timeout=180_000)
    shot(page, "loras-03-demo-pixel-style")
    assert "Seed 0 for both" in page.locator("#compare-info").inner_text()
    for side in ("raw", "turbo"):
        src = page.locator(f"#compare-{side} img").get_attribute("src")
        path = Path(unquote(src.split("file=", 1)[1].split("?")[0]))
        # Seed 0 on this machine: Raw 0.37, Turbo 0.47; without the LoRA 0.17 on both.
        assert grid_edge_share(Image.open(path)) > 0.3, side
