import os
import re
import threading
from pathlib import Path

import pytest
from storage_helpers import new_generation

from storage import HistoryFilter, HistoryStore, StorageError
from storage.pnginfo import read_parameters


def test_add_get_writes_files_and_rows(store):
    generation = store.add(new_generation(images=2))
    again = store.get(generation.id)
    assert again.prompt == "a red fox in the snow" and len(again.images) == 2
    for image in again.images:
        assert store.absolute(image.path).is_file() and store.absolute(image.thumb_path).is_file()
        assert image.path.startswith("images/") and image.path.endswith(".png")
        assert image.thumb_path.endswith(".webp")
    assert [i.seed for i in again.images] == [7, 8]


def test_png_carries_parameters_that_read_back(store):
    generation = store.add(new_generation(seed=1234))
    info = read_parameters(store.absolute(generation.images[0].path))
    assert "Seed: 1234" in info["parameters"]
    assert info["parsed"]["seed"] == 1234 and info["parsed"]["prompt"] == "a red fox in the snow"
    assert info["request"]["seed"] == 1234 and info["request"]["model"] == "Krea 2 Turbo"


def test_page_is_newest_first_and_keyset(store):
    ids = [store.add(new_generation(f"prompt {i}", images=0)).id for i in range(7)]
    first = store.page(limit=3)
    assert [g.id for g in first.items] == ids[::-1][:3]
    second = store.page(cursor=first.next_cursor, limit=3)
    assert [g.id for g in second.items] == ids[::-1][3:6]
    last = store.page(cursor=second.next_cursor, limit=3)
    assert [g.id for g in last.items] == ids[:1] and last.next_cursor is None


def test_a_search_of_only_punctuation_or_emoji_finds_it_as_typed(store):
    """A hostile pass: "%" or "🦊" showed every generation (no word left to search for)."""
    fox = store.add(new_generation("a fox 🦊 at 100% speed", images=0))
    store.add(new_generation("a plain whale", images=0))
    for typed in ("🦊", "%", " % "):
        assert [g.id for g in store.page(filters=HistoryFilter(text=typed)).items] == [fox.id], typed
    assert store.page(filters=HistoryFilter(text="_")).items == []  # LIKE's wildcards are characters here
    assert store.count(HistoryFilter(text="🐳")) == 0
    # "_" is punctuation to the index, as to the search: alone, it finds the prompts holding it (it found none).
    snake = store.add(new_generation("a snake_case name", images=0))
    store.add(new_generation("a case beside a snake", images=0))
    for typed in ("_", "snake_case"):  # and "snake_case" is one word, as the index holds it (review)
        assert [g.id for g in store.page(filters=HistoryFilter(text=typed)).items] == [snake.id], typed


def test_a_word_in_the_middle_of_a_japanese_or_chinese_prompt_is_found(store):
    """A hostile pass: the search index splits at spaces, so "狐" in "雪の中の赤い狐" found nothing (the sentence is
    one token). A word in a script written without spaces is found anywhere; other words of the same search still go
    through the index (prefixes, any order)."""
    fox = store.add(new_generation("雪の中の赤い狐 in the snow", images=0))
    store.add(new_generation("青い鯨", images=0))
    store.add(new_generation("a red fox", images=0))
    for typed in ("狐", "赤い", "雪の中", "狐 sno", "赤い狐"):
        assert [g.id for g in store.page(filters=HistoryFilter(text=typed)).items] == [fox.id], typed
    assert store.count(HistoryFilter(text="鯨 snow")) == 0  # every word must match, as elsewhere
    assert store.count(HistoryFilter(text="虎")) == 0
    # A Thai word keeps its vowel signs: split at them, "สวัสดี" became "สว" and "สด", which "สวนสดใส" holds too.
    hello = store.add(new_generation("สวัสดีครับ", images=0))
    store.add(new_generation("สวนสดใส", images=0))
    assert [g.id for g in store.page(filters=HistoryFilter(text="สวัสดี")).items] == [hello.id]


def test_filters_search_favorites_comparisons(store):
    fox = store.add(new_generation("a red fox in the snow", images=0))
    store.add(new_generation("a blue whale", images=0, checkpoint="raw"))
    pair = store.add(new_generation("compare me", images=0, comparison_id="abc"))
    assert [g.id for g in store.page(filters=HistoryFilter(text="fox")).items] == [fox.id]
    assert [g.id for g in store.page(filters=HistoryFilter(text="sno fox")).items] == [fox.id]  # prefix, any order
    assert store.count(HistoryFilter(checkpoint="raw")) == 1
    assert store.count(HistoryFilter(comparisons_only=True)) == 1
    assert store.comparison("abc")[0].id == pair.id
    assert store.toggle_favorite(fox.id) is True
    assert [g.id for g in store.page(filters=HistoryFilter(favorites_only=True)).items] == [fox.id]
    assert store.toggle_favorite(fox.id) is False
    assert store.count(HistoryFilter(text="%' OR 1=1 --")) == 0  # search text is data, never SQL


def test_delete_removes_rows_and_files(store):
    generation = store.add(new_generation(images=2))
    paths = [store.absolute(p) for i in generation.images for p in (i.path, i.thumb_path)]
    assert store.delete(generation.id) is True
    assert store.get(generation.id) is None and not any(p.exists() for p in paths)
    assert store.delete(generation.id) is False
    assert store.count() == 0


def test_a_running_generation_is_not_deleted_under_its_run(store):
    """A hostile pass deleted a running row from History: the run went on for all its steps, then found its row gone
    and threw the image away. One delete refuses it; a bulk delete keeps it and deletes the rest."""
    running = store.start(new_generation("still drawing", images=0).fields)
    done = store.add(new_generation("done"))
    with pytest.raises(StorageError, match=rf"^Generation #{running.id} is still running; cancel it or let it finish"):
        store.delete(running.id)
    assert store.delete_many([running.id, done.id]) == 1
    assert store.get(running.id).status == "running" and store.get(done.id) is None


def test_failed_and_cancelled_are_recorded_without_images(store):
    store.add(new_generation(images=0, status="failed", error="out of memory"))
    store.add(new_generation(images=0, status="cancelled", error="cancelled"))
    assert sorted(g.status for g in store.page().items) == ["cancelled", "failed"]


def test_a_file_write_that_fails_leaves_neither_row_nor_file(store, monkeypatch):
    import storage.store as store_module

    real = store_module.write_atomic
    calls = []

    def flaky(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:  # the second image's PNG, after the first image's files were written
            raise StorageError("The disk holding x is full; nothing was saved.")
        real(path, data)

    monkeypatch.setattr(store_module, "write_atomic", flaky)
    with pytest.raises(StorageError, match="full"):
        store.add(new_generation(images=2))
    assert store.count() == 0
    assert not [p for p in store.data_dir.rglob("*") if p.is_file() and p.suffix in {".png", ".webp"}]


def test_commit_failure_removes_the_files(store, monkeypatch):
    from sqlalchemy.orm import Session

    def broken_commit(self):
        raise __import__("sqlalchemy").exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    with pytest.raises(StorageError) as caught:
        store.add(new_generation(images=1))
    assert "COMMIT" not in str(caught.value)  # no raw SQL reaches the user
    monkeypatch.undo()
    assert store.count() == 0
    assert not [p for p in store.data_dir.rglob("*.png")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_data_folder_is_a_clear_error(store):
    (store.data_dir / "images").mkdir(exist_ok=True)
    os.chmod(store.data_dir / "images", 0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            store.add(new_generation())
    finally:
        os.chmod(store.data_dir / "images", 0o700)
    assert store.count() == 0


def test_files_written_atomically_get_the_permissions_open_would_give(tmp_path):
    """The temp file is 0600; the finished file is 0666 less the umask (a CLI --out another user could read), and a
    file written over keeps its own mode."""
    from storage.files import write_atomic

    umask = int(re.search(r"^Umask:\s+(\d+)", Path("/proc/self/status").read_text(), re.M).group(1), 8)
    write_atomic(tmp_path / "new.png", b"x")
    assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o666 & ~umask != 0o600
    (tmp_path / "kept.png").write_bytes(b"old")
    (tmp_path / "kept.png").chmod(0o640)
    write_atomic(tmp_path / "kept.png", b"new")
    assert (tmp_path / "kept.png").stat().st_mode & 0o777 == 0o640 and (tmp_path / "kept.png").read_bytes() == b"new"


def test_disk_full_is_a_clear_error(tmp_path):
    """A real ENOSPC from the kernel: /dev/full rejects every write."""
    from storage.files import write_atomic

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    import storage.files as files

    real_temp = files.temp_file_beside

    def temp_on_full(path, suffix=""):
        fd, name = real_temp(path, suffix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    files.temp_file_beside = temp_on_full
    try:
        with pytest.raises(StorageError, match="full"):
            write_atomic(tmp_path / "a.png", b"x" * 100_000)
    finally:
        files.temp_file_beside = real_temp
    assert not (tmp_path / "a.png").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_eight_threads_fifty_writes_each(store):
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                store.add(new_generation(f"thread {n} write {i}", images=0))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 400


def test_a_locked_database_waits_instead_of_failing(tmp_path):
    """Another process holds the write lock for a second: the write waits for it (busy_timeout), then succeeds."""
    import sqlite3
    import time

    from storage import HistoryStore

    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(tmp_path / "data", url).open()
    blocker = sqlite3.connect(tmp_path / "h.sqlite3", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
    release = threading.Timer(1.0, lambda: blocker.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    store.add(new_generation(images=0))
    waited = time.monotonic() - started
    release.join()
    blocker.close()
    assert waited >= 0.9 and store.count() == 1
    store.close()


# ------------------------------------------------------------------------------------------------ bulk and archives
def test_bulk_favorite_and_delete(store):
    rows = [store.add(new_generation(f"p{i}")) for i in range(3)]
    assert store.set_favorite([rows[0].id, rows[2].id, 999_999], True) == 2
    assert [g.favorite for g in reversed(store.page().items)] == [True, False, True]
    files = [store.absolute(i.path) for g in rows[:2] for i in g.images]
    assert store.delete_many([rows[0].id, rows[1].id]) == 2
    assert store.count() == 1 and not any(path.exists() for path in files)


def test_export_and_import_report_their_progress_per_generation(store, tmp_path):
    """A hostile pass: importing 1,500 rows took 32 s with nothing on the page; 100,000 would take many minutes."""
    for i in range(3):
        store.add(new_generation(f"row {i}", seed=i))
    archive, exported, imported = tmp_path / "history.zip", [], []
    store.export_archive(archive, on_progress=lambda done, total: exported.append((done, total)))
    other = HistoryStore(tmp_path / "other").open()
    other.add(new_generation("row 0", seed=0, created_at=store.page().items[-1].created_at))  # already there
    assert other.import_archive(archive, on_progress=lambda done, total: imported.append((done, total))) == (2, 1)
    assert exported == imported == [(1, 3), (2, 3), (3, 3)]
    other.close()


def test_two_imports_of_one_zip_at_once_add_its_rows_once(store, tmp_path):
    """A hostile pass imported one zip from two tabs at once: each read the rows already here before either added
    any, and every row came in twice."""
    for i in range(12):
        store.add(new_generation(f"row {i}", seed=i))
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    other = HistoryStore(tmp_path / "other").open()
    start, results = threading.Barrier(2), []

    def run() -> None:
        start.wait()
        results.append(other.import_archive(archive))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [(0, 12), (12, 0)] and other.count() == 12
    other.close()


def test_export_then_import_into_another_database(store, tmp_path):
    import zipfile

    first = store.add(new_generation("a fox, exported", seed=11))
    store.toggle_favorite(first.id)
    store.add(new_generation("not selected"))
    archive = tmp_path / "out" / "history.zip"
    assert store.export_archive(archive, [first.id]) == 1
    with zipfile.ZipFile(archive) as zipped:
        assert {"history.json", "history.csv"} <= set(zipped.namelist())
        assert "a fox, exported" in zipped.read("history.csv").decode()
    png = store.absolute(store.get(first.id).images[0].path).read_bytes()

    from storage import HistoryStore

    other = HistoryStore(tmp_path / "other", f"sqlite:///{tmp_path / 'other.sqlite3'}").open()
    try:
        assert other.import_archive(archive) == (1, 0)
        assert other.import_archive(archive) == (0, 1)  # twice adds nothing
        [row] = other.page().items
        assert (row.prompt, row.seed, row.favorite, row.status) == ("a fox, exported", 11, True, "ok")
        assert other.absolute(row.images[0].path).read_bytes() == png  # the PNG as stored, metadata intact
        assert other.absolute(row.images[0].thumb_path).exists()
    finally:
        other.close()


def test_import_refuses_what_is_not_an_export(store, tmp_path):
    import json
    import zipfile

    not_zip = tmp_path / "a.zip"
    not_zip.write_text("hello")
    with pytest.raises(StorageError, match="not a zip"):
        store.import_archive(not_zip)
    bad = tmp_path / "b.zip"
    with zipfile.ZipFile(bad, "w") as zipped:
        record = {"created_at": "2026-01-01T00:00:00+00:00", "checkpoint": "turbo", "prompt": "x", "seed": 1,
                  "steps": "8", "guidance": 0.0, "width": 256, "height": 256, "num_images": 1,
                  "status": "ok"}  # fmt: skip
        zipped.writestr("history.json", json.dumps({"format": "krea2-studio-history/1", "generations": [record]}))
    with pytest.raises(StorageError, match="invalid steps"):
        store.import_archive(bad)
    assert store.count() == 0


GOOD_ENTRY = {"created_at": "2026-01-01T00:00:00+00:00", "checkpoint": "turbo", "prompt": "x", "seed": 1, "steps": 8,
              "guidance": 0.0, "width": 256, "height": 256, "num_images": 1, "status": "ok", "error": None,
              "comparison_id": None, "source_sha256": None, "mask_sha256": None}  # fmt: skip


def export_of(path, **changes):
    """A history export of one entry: GOOD_ENTRY with `changes`."""
    import json
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        document = {"format": "krea2-studio-history/1", "generations": [{**GOOD_ENTRY, **changes}]}
        zipped.writestr("history.json", json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"seed": 2**70}, "seed"), ({"steps": 10**30}, "steps"), ({"favorite": "no"}, "favorite"),
     ({"created_at": "0001-01-01T00:00:00+05:00"}, "created_at"), ({"comparison_id": "c" * 5000}, "comparison_id"),
     ({"prompt": "a\x00b"}, "prompt"), ({"device": "\ud800"}, "device"),
     ({"images": [{"file": "images/1.png", "seed": 2**80}]}, "image")],
)  # fmt: skip
def test_import_refuses_values_a_database_cannot_hold_in_one_sentence(store, tmp_path, changes, field):
    """A hostile pass: numbers past 64 bits and dates that leave the calendar in UTC failed the import with
    "Something went wrong (OverflowError)"; "no" was taken as a favourite (bool("no") is True)."""
    import zipfile

    path = export_of(tmp_path / "e.zip", **changes)
    if "images" in changes:
        with zipfile.ZipFile(path, "a") as zipped:
            zipped.writestr("images/1.png", b"")
    with pytest.raises(
        StorageError, match=f"^Entry 1 of history.json has an (invalid {field}|{field} with an invalid)"
    ):
        store.import_archive(path)
    assert store.count() == 0


def test_import_refuses_a_history_json_too_large_to_read(store, tmp_path, monkeypatch):
    import storage.archive as archive

    monkeypatch.setattr(archive, "MAX_HISTORY_JSON_BYTES", 100)
    with pytest.raises(StorageError, match=r"history\.json in that zip is larger than"):
        store.import_archive(export_of(tmp_path / "e.zip"))
    monkeypatch.undo()
    assert store.import_archive(export_of(tmp_path / "e.zip")) == (1, 0)


@pytest.mark.parametrize(
    ("cause", "sentence"),
    [
        ("attempt to write a readonly database", "The history database is read-only"),
        ("database disk image is malformed", "The history database file is damaged"),
        ("database is locked", "locked by another process"),
        ("database or disk is full", "The disk holding the history database is full"),
        ("no such savepoint", "The history database failed (OperationalError)"),
    ],
)
def test_a_database_error_says_what_is_wrong(tmp_path, cause, sentence):
    """A read-only folder, a damaged file, a lock held by another process and a full disk were all "The history
    database failed (OperationalError)" (a hostile pass): the cause was only in the log."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from storage import HistoryStore

    store = HistoryStore(tmp_path / "data").open()
    try:
        with pytest.raises(StorageError, match=re.escape(sentence)):
            with store.session():
                raise OperationalError("UPDATE generations", {}, sqlite3.OperationalError(cause))
    finally:
        store.close()


def test_a_damaged_database_file_is_named_as_such_at_start(tmp_path):
    from storage import HistoryStore

    HistoryStore(tmp_path / "data").open().close()
    database = next((tmp_path / "data").glob("*.sqlite3"))
    database.write_bytes(b"this is not a database" * 500)
    with pytest.raises(StorageError, match="The history database file is damaged"):
        HistoryStore(tmp_path / "data").open()
