"""Init images in the data folder: stored once under their content address before any row names them, and read back
to reuse a generation's settings; outpaint and the hi-res pass prepared as the UI, API and CLI use them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from krea2.image_input import InvalidImage, Outpaint
from storage import StorageError
from storage.pnginfo import parse_parameters
from studio.sources import hires_source, image_source, reused_source, store_source
from tests.storage_helpers import new_generation


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_sources_are_stored_once_and_reused(store) -> None:
    picture = Image.new("RGB", (320, 256), (10, 120, 200))
    mask = Image.new("L", (320, 256), 0)
    mask.paste(255, (0, 0, 160, 256))
    prepared = image_source(png(picture), strength=0.7, mask=png(mask), feather=4)
    source = prepared.source
    assert (source.mode, source.strength, prepared.size) == ("inpaint", 0.7, (320, 256))
    assert not store.absolute(store.source_relative(source.image_sha256)).exists()  # nothing written yet
    store_source(store, source)
    store_source(store, source)  # the same picture again: the same single file
    files = sorted(p.name for p in (store.data_dir / "sources").rglob("*.png"))
    assert files == sorted({f"{source.image_sha256}.png", f"{source.mask_sha256}.png"})
    fields = {"mode": "inpaint", "strength": 0.7, "source_sha256": source.image_sha256,
              "mask_sha256": source.mask_sha256}  # fmt: skip
    row = store.add(new_generation(**fields))
    again = reused_source(store, store.get(row.id))
    assert again is not None and again.mode == "inpaint" and again.strength == 0.7
    assert np.array_equal(np.asarray(again.image), np.asarray(source.image))
    assert np.array_equal(np.asarray(again.mask), np.asarray(source.mask))
    assert reused_source(store, store.get(store.add(new_generation()).id)) is None


def test_a_missing_or_forged_source_is_refused_with_a_sentence(store) -> None:
    with pytest.raises(StorageError, match="no longer in the data folder"):
        store.load_source("0" * 64)
    with pytest.raises(StorageError, match="not the address"):
        store.load_source("../../etc/passwd")


def test_outpaint_and_hires_sources() -> None:
    picture = Image.new("RGB", (512, 512), (200, 30, 30))
    prepared = image_source(png(picture), strength=1.0, outpaint=Outpaint(left=128))
    assert prepared.source.mode == "outpaint" and prepared.size == (640, 512)
    assert prepared.notes[-1] == "canvas extended to 640×512"
    with pytest.raises(InvalidImage, match="own mask"):
        image_source(png(picture), strength=1.0, outpaint=Outpaint(left=128), mask=png(picture))
    hires = hires_source(png(picture), 2.0)
    assert hires.source.mode == "hires" and hires.size == (1024, 1024) and hires.source.strength == 0.35


def test_png_parameters_carry_the_denoising_strength() -> None:
    from storage.pnginfo import format_parameters

    params = {"prompt": "p", "steps": 8, "guidance": 0.0, "seed": 1, "width": 256, "height": 256,
              "model": "Krea 2 Turbo", "strength": 0.45, "source_sha256": "ab" * 32}  # fmt: skip
    text = format_parameters(params)
    assert "Denoising strength: 0.45, Init image hash: ababababab" in text
    assert parse_parameters(text)["strength"] == 0.45
