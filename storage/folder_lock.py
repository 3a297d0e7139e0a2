"""Which processes use a data folder, so that start-up repair runs only in one that is alone.

Repair (storage/repair.py) marks every `running` row `interrupted` and moves files no row points at to orphans/. Both
are right after a crash and wrong while another process works in the same folder: a second server, or a `python -m
studio` run beside the app, would mark the first one's live generations interrupted and could move a picture it has
just written (files are written before their rows) out of the way. Every process that opens the folder holds a
shared lock on `LOCK_NAME` for as long as it is open; repair needs the exclusive lock, which only a process alone can
take. The lock is the kernel's (`flock`): a process that dies, however it dies, releases it.

Where `fcntl` does not exist (Windows) nothing is locked and every process counts as alone, as before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".krea2-studio.lock"
log = logging.getLogger(__name__)


class FolderLock:
    """A data folder's lock: `claim` says whether this process is alone (holding the lock exclusively); `share`
    then keeps a shared hold until `release` (or the process's end)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def claim(self) -> bool:
        """Opens the lock and tries to hold it exclusively, without waiting: True when no other process has the
        folder open (then this one may repair it), False when one has."""
        if fcntl is None:
            return True
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:  # a folder that takes no lock (some network mounts) or no new file: as before locks
            log.warning("The data folder cannot be locked (%s): start-up repair assumes this process is alone.",
                        error.strerror or error)  # fmt: skip
            self.release()
        return True

    def share(self) -> None:
        """Holds the lock shared from now on (waiting, if need be, for another process's repair to end)."""
        if fcntl is not None and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH)
            except OSError:  # held exclusively until `release`: the process stays alone, as where locks fail
                pass

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases its lock
            self._fd = None
