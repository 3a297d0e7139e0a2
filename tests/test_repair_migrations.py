import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from storage_helpers import new_generation

from storage import HistoryFilter, HistoryStore, StorageError
from storage.database import alembic_config, current_revision, make_engine, migrate

ROOT = Path(__file__).resolve().parents[1]
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()  # the newest revision, whichever it is


def test_repair_marks_vanished_moves_orphans_removes_temp(store):
    kept = store.add(new_generation("kept"))
    gone = store.add(new_generation("gone"))
    store.absolute(gone.images[0].path).unlink()
    orphan = store.absolute("images/2026/01/01/orphan.png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"png")
    temp = store.absolute("images/2026/01/01/.tmp-abc")
    temp.write_bytes(b"half")
    report = store.repair()
    assert (report.rows_marked_missing, report.orphans_moved, report.temp_removed) == (1, 1, 1)
    assert store.get(gone.id).files_missing and not store.get(kept.id).files_missing
    assert (store.data_dir / "orphans/images/2026/01/01/orphan.png").is_file() and not orphan.exists()
    assert not temp.exists()
    assert store.repair().rows_marked_missing == 0  # already marked: nothing new


def test_repair_moves_init_images_no_row_names_and_keeps_the_rest(store):
    """A hostile pass killed a server mid-import: the init image written before its row stayed in sources/ for good
    (repair walked only images/ and thumbs/), though it may be someone's private photo."""
    from PIL import Image

    named = store.put_source(Image.new("RGB", (64, 64), (200, 10, 10)))
    mask = store.put_source(Image.new("L", (64, 64), 255))
    store.add(new_generation("inpainted", source_sha256=named, mask_sha256=mask, mode="inpaint", strength=0.7))
    left = store.put_source(Image.new("RGB", (64, 64), (10, 10, 200)))  # as an import killed before its row
    temp = store.absolute(store.source_relative(left)).with_name(".tmp-half.png")
    temp.write_bytes(b"half")
    report = store.repair()
    assert (report.orphans_moved, report.temp_removed) == (1, 1)
    assert (
        store.absolute(store.source_relative(named)).is_file() and store.absolute(store.source_relative(mask)).is_file()
    )
    assert not store.absolute(store.source_relative(left)).exists() and not temp.exists()
    assert (store.data_dir / "orphans" / store.source_relative(left)).is_file()


def test_migrations_from_empty_and_rerun(database_url, tmp_path):
    migrate(database_url)
    engine = make_engine(database_url)
    assert current_revision(engine) == HEAD
    assert {"generations", "images"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    migrate(database_url)  # a second start is a no-op
    HistoryStore(tmp_path / "d", database_url).open().add(new_generation(images=0))


def test_failed_migration_leaves_the_database_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(tmp_path / "d", url).open()
    store.add(new_generation(images=0))
    store.close()
    broken = tmp_path / "broken_versions"
    broken.mkdir()
    (broken / "9999_broken.py").write_text(
        textwrap.dedent(f"""
        import sqlalchemy as sa
        from alembic import op
        revision = "9999_broken"
        down_revision = "{HEAD}"
        def upgrade():
            op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
            op.execute("ALTER TABLE generations ADD COLUMN x INTEGER")
            raise RuntimeError("simulated failure in the middle of a migration")
        """)
    )
    with pytest.raises(StorageError, match="left as it was"):
        migrate(url, extra_version_locations=[str(broken)])
    engine = create_engine(url)
    assert current_revision(engine) == HEAD
    tables = inspect(engine).get_table_names()
    assert "half_done" not in tables
    assert "x" not in {c["name"] for c in inspect(engine).get_columns("generations")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM generations")).scalar() == 1
    engine.dispose()


WRITER = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from storage import HistoryStore
from storage_helpers import new_generation
store = HistoryStore({data!r}, {url!r}).open()
i = 0
while True:
    store.add(new_generation(f"crash loop {{i}}", images=1))
    i += 1
    print(i, flush=True)
"""


def test_sigkill_mid_write_loses_nothing(tmp_path):
    data, url = tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}"
    script = WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), data=str(data), url=url)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    count = 0
    deadline = time.monotonic() + 60
    while count < 25 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        count = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert count >= 25, "writer did not get going"

    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    store = HistoryStore(data, url).open()  # runs repair
    assert store.repair_report.rows_marked_missing == 0  # every committed row has its files
    assert store.count() >= count
    for generation in store.page(limit=200).items:
        for image in generation.images:
            path = store.absolute(image.path)
            assert path.is_file()
            from PIL import Image

            with Image.open(path) as img:
                img.load()  # complete PNG, not a partial one
    assert not list((data / "images").rglob(".tmp-*"))


def back_to_0003(url: str, then=None) -> None:
    """Downgrade a SQLite history to revision 0003 (before generation ids were kept from reuse), with foreign keys off
    as `migrate` runs them, and run the statement `then` in the same transaction."""
    from alembic import command

    from storage.database import _foreign_keys

    engine = make_engine(url, transactional_ddl=True)
    with engine.connect() as connection:
        _foreign_keys(connection, on=False)
        with connection.begin():
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0003_image_inputs")
            if then is not None:
                connection.execute(then)
        _foreign_keys(connection, on=True)
    engine.dispose()


def test_generation_ids_are_never_reused_and_the_rebuild_keeps_every_image(tmp_path):
    """A hostile pass saw "Generation #64" twice: SQLite handed a deleted newest row's id to the next one. Migration
    0004 rebuilds the table with AUTOINCREMENT; run with foreign keys off, the old table's drop does not take the
    images with it."""
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(tmp_path / "d", url).open()
    first, second, newest = (store.add(new_generation(f"g{i}", images=1)) for i in range(3))
    assert store.delete(newest.id)
    assert store.add(new_generation("after", images=0)).id == newest.id + 1
    store.close()

    def table_sql() -> str:
        engine = create_engine(url)
        with engine.connect() as connection:
            sql = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'generations'")).scalar()
        engine.dispose()
        return sql

    back_to_0003(url)  # the schema before 0004, as older databases are
    assert "AUTOINCREMENT" not in table_sql()
    store = HistoryStore(tmp_path / "d", url).open()  # migrates to the newest schema
    assert "AUTOINCREMENT" in table_sql()
    assert [len(store.get(g.id).images) for g in (first, second)] == [1, 1]
    assert all(store.absolute(store.get(g.id).images[0].path).is_file() for g in (first, second))
    assert [g.id for g in store.page(filters=HistoryFilter(text="g1")).items] == [second.id]  # search kept up
    latest = store.add(new_generation("latest", images=1))
    assert [g.id for g in store.page(filters=HistoryFilter(text="latest")).items] == [latest.id]
    with create_engine(url).connect() as connection:  # the search index agrees with the table it indexes
        connection.exec_driver_sql("INSERT INTO generations_fts(generations_fts, rank) VALUES ('integrity-check', 1)")
    assert store.delete(latest.id) and store.add(new_generation("next", images=0)).id == latest.id + 1
    store.close()


def test_rows_already_pointing_nowhere_do_not_stop_the_upgrade(tmp_path):
    """An images row whose generation is gone (written with foreign keys off, as the sqlite3 shell does by default)
    is start-up repair's to handle: the foreign-key check after a migration counts only rows the migration made."""
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = HistoryStore(tmp_path / "d", url).open()
    kept = store.add(new_generation("kept", images=1))
    store.close()
    orphan = text("UPDATE images SET generation_id = 999 WHERE generation_id = :id").bindparams(id=kept.id)
    back_to_0003(url, orphan)
    store = HistoryStore(tmp_path / "d", url).open()  # upgrades; repair deals with the orphan file
    assert store.get(kept.id).images == []
    store.close()
    engine = make_engine(url)
    assert current_revision(engine) == HEAD
    engine.dispose()


HOLDER = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from storage import HistoryStore
from storage_helpers import new_generation
store = HistoryStore({data!r}, {url!r}).open()
live = store.start(new_generation("being drawn").fields)
fresh = store.absolute("images/2026/01/01/just-written.png")  # written, its row not yet committed
fresh.parent.mkdir(parents=True, exist_ok=True)
fresh.write_bytes(b"png")
print(live.id, flush=True)
time.sleep(120)
"""


def test_start_up_repair_runs_only_in_a_process_alone_in_its_data_folder(tmp_path, caplog):
    """A second process opening a data folder another has open (a second server, or the command line beside the
    app) must not repair it: repair would mark the first one's live generation interrupted and move the picture it
    has just written (before its row) to orphans/. It skips repair and says why; once the first process is gone,
    killed or not (the kernel drops its lock), the next process to open the folder repairs it."""
    data, url = tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}"
    script = HOLDER.format(root=str(ROOT), tests=str(ROOT / "tests"), data=str(data), url=url)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        live_id = int(holder.stdout.readline())
        fresh = data / "images/2026/01/01/just-written.png"
        with caplog.at_level("WARNING", logger="storage.store"):
            second = HistoryStore(data, url).open()
        assert second.repair_report is None and "start-up repair is left" in caplog.text
        assert second.get(live_id).status == "running" and fresh.is_file()
        second.add(new_generation("beside it"))  # the folder stays usable by both
        second.close()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    third = HistoryStore(data, url).open()
    assert third.repair_report is not None and third.repair_report.rows_interrupted == 1
    assert third.get(live_id).status == "interrupted"
    assert not fresh.exists() and (data / "orphans/images/2026/01/01/just-written.png").is_file()
    # Within one process too: a second store on the folder while the first is open leaves it alone.
    fourth = HistoryStore(data, url).open()
    assert fourth.repair_report is None
    fourth.close()
    third.close()
    last = HistoryStore(data, url).open()
    assert last.repair_report is not None
    last.close()


def test_a_data_folder_that_takes_no_lock_opens_as_before(tmp_path, monkeypatch, caplog):
    """Some network mounts refuse `flock` (ENOLCK): the store still opens, repairs as a process alone did before the
    lock existed, and says that it could not lock."""
    from storage import folder_lock

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folder_lock.fcntl, "flock", refuse)
    with caplog.at_level("WARNING", logger="storage.folder_lock"):
        store = HistoryStore(tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}").open()
    assert store.repair_report is not None and "cannot be locked (No locks available)" in caplog.text
    store.add(new_generation())
    store.close()


def test_a_lock_held_exclusively_too_long_or_refused_is_let_go_and_the_store_opens(tmp_path, monkeypatch, caplog):
    """`share` never hangs a start-up: a lock another process holds exclusively past the wait (its repair stuck), or a
    shared lock the system refuses, is let go with a warning, and the store opens holding none (as before the lock
    existed), so that it keeps no later process out either."""
    import fcntl

    from storage import folder_lock

    data, url = tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}"
    data.mkdir()
    stuck = os.open(data / folder_lock.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(stuck, fcntl.LOCK_EX)  # another open file description: the store's claim and share both meet it
    monkeypatch.setattr(folder_lock, "SHARE_WAIT_S", 0.3)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="storage.folder_lock"):
        store = HistoryStore(data, url).open()
    assert time.monotonic() - started < 10
    assert store.repair_report is None and "held it exclusively for over 0.3 s" in caplog.text
    os.close(stuck)
    store.close()

    real = fcntl.flock

    def no_shared(fd, operation):
        if operation & fcntl.LOCK_SH:
            raise OSError(errno.ENOLCK, "No locks available")
        return real(fd, operation)

    monkeypatch.setattr(folder_lock.fcntl, "flock", no_shared)
    caplog.clear()
    with caplog.at_level("WARNING", logger="storage.folder_lock"):
        first = HistoryStore(data, url).open()
    assert first.repair_report is not None and "could not be shared (No locks available)" in caplog.text
    monkeypatch.setattr(folder_lock.fcntl, "flock", real)
    second = HistoryStore(data, url).open()
    assert second.repair_report is not None  # the first holds nothing that keeps it out
    second.close()
    first.close()


def test_a_lock_file_made_by_another_user_is_opened_read_only(tmp_path, monkeypatch):
    """A server running as a service account made the lock file; the command line run by someone else cannot open it
    for writing, and a read-only descriptor must still take part in the lock (else that process would count itself
    alone and repair beside the server)."""
    from storage import folder_lock

    data = tmp_path / "data"
    data.mkdir()
    holder = folder_lock.FolderLock(data)
    assert holder.claim()
    holder.share()
    real = os.open

    def not_ours(path, flags, *args):
        if flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags, *args)

    monkeypatch.setattr(folder_lock.os, "open", not_ours)
    other = folder_lock.FolderLock(data)
    assert not other.claim()  # it sees the holder
    other.release()
    holder.release()
    assert other.claim()
    other.release()
