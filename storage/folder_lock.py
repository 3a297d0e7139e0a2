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
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".krea2-studio.lock"
SHARE_WAIT_S = 60.0  # how long a process waits for another's start-up repair (seconds, far more than it takes)
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
                self._fd = self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:  # a folder that takes no lock (some network mounts) or no file: as before locks
            log.warning("The data folder cannot be locked (%s): start-up repair assumes this process is alone.",
                        error.strerror or error)  # fmt: skip
            self.release()
        return True

    def _open(self) -> int:
        try:  # 0o666 less the umask: another user's process (the command line beside a service) may open it too
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # made by another user: a read-only descriptor takes the lock as well
            return os.open(self.path, os.O_RDONLY)

    def share(self, wait_s: float | None = None) -> None:
        """Holds the lock shared from now on, waiting up to `wait_s` (default SHARE_WAIT_S) for another process's
        repair to end. A lock that cannot be had (still held exclusively, or refused) is let go with a warning: this
        process then holds none, as before the lock existed, rather than keeping the app from starting or keeping
        others out."""
        if fcntl is None or self._fd is None:
            return
        wait_s = SHARE_WAIT_S if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                problem = f"another process has held it exclusively for over {wait_s:g} s"
            except OSError as error:
                problem = error.strerror or str(error)
            log.warning("The data folder's lock could not be shared (%s): going on without it.", problem)
            self.release()
            return

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases its lock
            self._fd = None
