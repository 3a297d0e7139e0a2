"""History export and import carry the init images and masks the generations started from (`sources/` in the data
folder, content-addressed): each once in the zip, restored on import (a file already here is kept), and an archive
whose source is missing or corrupt is refused with a sentence before anything of it is written."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from storage import HistoryStore, StorageError
from storage.archive import source_name
from tests.storage_helpers import new_generation


@pytest.fixture
def other(tmp_path):
    """The data folder an archive is imported into."""
    history = HistoryStore(tmp_path / "other", f"sqlite:///{tmp_path / 'other.sqlite3'}").open()
    yield history
    history.close()


def started_from_pictures(store) -> tuple[str, str]:
    """Two inpaint generations sharing one init image and one mask, and a text-to-image one; (image, mask) addresses."""
    image = store.put_source(Image.new("RGB", (64, 64), (10, 120, 200)))
    mask = store.put_source(Image.new("L", (64, 64), 255))
    for seed in (1, 2):
        store.add(new_generation("from a picture", seed=seed, mode="inpaint", strength=0.7, source_sha256=image,
                                 mask_sha256=mask))  # fmt: skip
    store.add(new_generation("from noise", seed=3))
    return image, mask


def source_files(store) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (store.data_dir / "sources").rglob("*.png")}


def picture_files(store) -> list[Path]:
    """Every PNG and thumbnail in a data folder: images, thumbnails and sources."""
    return [path for path in store.data_dir.rglob("*") if path.suffix in (".png", ".webp")]


def rewritten(archive: Path, target: Path, change) -> Path:
    """A copy of `archive` with each member's bytes passed through `change(name, data)` (None leaves it out)."""
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = change(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
    return target


def test_sources_travel_once_and_come_back(store, other, tmp_path):
    image, mask = started_from_pictures(store)
    archive = tmp_path / "history.zip"
    assert store.export_archive(archive) == 3
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        rows = json.loads(zipped.read("history.json"))["generations"]
    assert sorted(n for n in names if n.startswith("sources/")) == sorted([source_name(image), source_name(mask)])
    assert [(r["mode"], r["strength"], r["source_sha256"], r["mask_sha256"]) for r in rows] == [
        ("inpaint", 0.7, image, mask), ("inpaint", 0.7, image, mask), ("txt2img", None, None, None)
    ]  # fmt: skip

    assert other.import_archive(archive) == (3, 0)
    assert source_files(other) == source_files(store)  # the same bytes under the same addresses
    restored = [g for g in other.page().items if g.source_sha256]
    assert {(g.mode, g.strength, g.source_sha256, g.mask_sha256) for g in restored} == {("inpaint", 0.7, image, mask)}
    assert other.load_source(image).size == (64, 64) and other.load_source(mask).mode == "L"
    assert other.import_archive(archive) == (0, 3)  # twice adds nothing


def test_a_source_already_here_is_kept_as_it_is(store, other, tmp_path):
    image, _mask = started_from_pictures(store)
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    here = other.absolute(other.source_relative(other.put_source(Image.new("RGB", (64, 64), (10, 120, 200)))))
    before = here.stat()
    assert other.import_archive(archive) == (3, 0)
    after = here.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    assert here.name == f"{image}.png"


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda name, data: data[:-20] + bytes(20) if name.startswith("sources/") else data,
         r"is corrupt \(its content does not match its name\)"),
        (lambda name, data: None if name.startswith("sources/") else data, "names an init image"),
    ],
    ids=["corrupt", "missing"],
)  # fmt: skip
def test_a_corrupt_or_missing_source_refuses_the_whole_archive(store, other, tmp_path, change, sentence):
    started_from_pictures(store)
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    broken = rewritten(archive, tmp_path / "broken.zip", change)
    with pytest.raises(StorageError, match=sentence) as caught:
        other.import_archive(broken)
    assert "\n" not in str(caught.value)
    assert other.count() == 0 and picture_files(other) == []  # nothing of it stays


def test_a_bad_image_late_in_the_archive_leaves_nothing_behind(store, other, tmp_path):
    """Rows added before the entry that fails are removed again, with their files and the sources written."""
    started_from_pictures(store)
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    with zipfile.ZipFile(archive) as zipped:
        last = json.loads(zipped.read("history.json"))["generations"][-1]["images"][0]["file"]
    broken = rewritten(archive, tmp_path / "broken.zip", lambda name, data: b"not a png" if name == last else data)
    with pytest.raises(StorageError, match="not a readable PNG"):
        other.import_archive(broken)
    assert other.count() == 0 and picture_files(other) == []


def test_a_source_lost_on_disk_is_exported_without_its_link(store, other, tmp_path):
    image, mask = started_from_pictures(store)
    store.absolute(store.source_relative(mask)).unlink()
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    with zipfile.ZipFile(archive) as zipped:
        assert source_name(mask) not in zipped.namelist()
    assert other.import_archive(archive) == (3, 0)  # the archive holds every source its rows name
    restored = [g for g in other.page().items if g.mode == "inpaint"]
    assert {(g.source_sha256, g.mask_sha256) for g in restored} == {(image, None)}
