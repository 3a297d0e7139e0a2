import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from storage_helpers import new_generation

from storage import HistoryStore, StorageError
from storage.database import current_revision, head_revision, make_engine, migrate

ROOT = Path(__file__).resolve().parents[1]


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


def test_migrations_from_empty_and_rerun(database_url, tmp_path):
    migrate(database_url)
    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision()
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
    (broken / "0002_broken.py").write_text(
        textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op
        revision = "broken"
        down_revision = {head!r}
        def upgrade():
            op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
            op.execute("ALTER TABLE generations ADD COLUMN x INTEGER")
            raise RuntimeError("simulated failure in the middle of a migration")
        """).format(head=head_revision())
    )
    with pytest.raises(StorageError, match="left as it was"):
        migrate(url, extra_version_locations=[str(broken)])
    engine = create_engine(url)
    assert current_revision(engine) == head_revision()
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
