"""Start-up repair: make files and rows agree again after a crash or a hand-edited data folder.

- temp files left by an interrupted atomic write are removed;
- rows whose files vanished are marked (`files_missing`), and unmarked when the files come back;
- files no row points at (images, thumbnails, init images and masks) are moved to orphans/ (never deleted silently);
- rows still `running` belong to generations a crash or kill stopped: they become `interrupted`, so the user sees
  what was lost. (Repair runs once at start-up, before this process accepts work, and only in a process that has
  the data folder to itself (storage/folder_lock.py), so no row it finds is live. Processes on other machines
  sharing one PostgreSQL database are not seen: README, "Several replicas".)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .files import IMAGES_DIR, ORPHANS_DIR, SOURCES_DIR, TEMP_PREFIX, THUMBS_DIR, source_file
from .models import Generation, Image

log = logging.getLogger(__name__)
INTERRUPTED_MESSAGE = "The server stopped before this generation finished; nothing was saved."


@dataclass
class RepairReport:
    temp_removed: int = 0
    rows_marked_missing: int = 0
    rows_restored: int = 0
    orphans_moved: int = 0
    rows_interrupted: int = 0

    @property
    def lost_nothing(self) -> bool:
        return self.rows_marked_missing == 0


def repair_files(data_dir: Path, session_scope: Callable[[], AbstractContextManager[Session]]) -> RepairReport:
    """Repair the data folder `data_dir` against the rows reached through `session_scope` (`HistoryStore.session`)."""
    report = RepairReport()
    known: set[str] = set()
    with session_scope() as session:
        interrupted = session.execute(
            update(Generation)
            .where(Generation.status == "running")
            .values(status="interrupted", error=INTERRUPTED_MESSAGE)
            .execution_options(synchronize_session=False)
        )
        report.rows_interrupted = interrupted.rowcount or 0
        rows = session.execute(
            select(Generation.id, Generation.files_missing, Image.path, Image.thumb_path).join(Image)
        ).all()
        missing_by_generation: dict[int, tuple[bool, bool]] = {}
        for generation_id, flagged, path, thumb in rows:
            known.update((path, thumb))
            gone = not ((data_dir / path).is_file() and (data_dir / thumb).is_file())
            was_flagged, any_gone = missing_by_generation.get(generation_id, (flagged, False))
            missing_by_generation[generation_id] = (was_flagged, any_gone or gone)
        for column in (Generation.source_sha256, Generation.mask_sha256):  # init images and masks rows name
            known.update(source_file(digest) for digest in session.scalars(select(column).distinct()) if digest)
        for generation_id, (was_flagged, gone) in missing_by_generation.items():
            if gone != was_flagged:
                session.get(Generation, generation_id).files_missing = gone
                if gone:
                    report.rows_marked_missing += 1
                else:
                    report.rows_restored += 1
        session.commit()

    # sources/ too: an import killed mid-way left an init image no row names (it may be someone's private photo).
    for top in (IMAGES_DIR, THUMBS_DIR, SOURCES_DIR):
        root = data_dir / top
        if not root.is_dir():
            continue
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, data_dir).replace(os.sep, "/")
                if name.startswith(TEMP_PREFIX):
                    os.unlink(path)
                    report.temp_removed += 1
                elif relative not in known:
                    target = data_dir / ORPHANS_DIR / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, target)
                    report.orphans_moved += 1
    log.info(
        "History repair: %d temp files removed, %d generations missing files, %d restored, %d orphans moved, "
        "%d interrupted",
        report.temp_removed, report.rows_marked_missing, report.rows_restored, report.orphans_moved,
        report.rows_interrupted,
    )  # fmt: skip
    return report
