"""Files written atomically: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image as PILImage

from .errors import StorageError

TEMP_PREFIX = ".tmp-"
log = logging.getLogger(__name__)
THUMB_SIZE = 256
# The data folder's layout: images and thumbnails by day, files no row points at (moved there by repair), and files the
# app itself serves (a placeholder). Everything but the database file may be served.
IMAGES_DIR, THUMBS_DIR, ORPHANS_DIR, STATIC_DIR = "images", "thumbs", "orphans", "static"
SOURCES_DIR = "sources"  # init images and masks, stored once each under their sha256 (rows share them)
SERVED_DIRS = (IMAGES_DIR, THUMBS_DIR, STATIC_DIR, SOURCES_DIR)
SPACES_DATA_DIR = Path("/data")  # Hugging Face Spaces persistent storage


def default_data_dir() -> Path:
    """Where history lives when no folder is named: a Space's persistent storage when mounted, else ./data."""
    if SPACES_DATA_DIR.is_dir() and os.access(SPACES_DATA_DIR, os.W_OK):
        return SPACES_DATA_DIR
    return Path("data")


def source_file(digest: str) -> str:
    """Where an init image or mask of this sha256 is kept, relative to the data folder."""
    return f"{SOURCES_DIR}/{digest[:2]}/{digest}.png"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def explain_os_error(error: OSError, path: Path) -> StorageError:
    """A data-folder write's failure in one sentence that names no server path (visitors of a hosted app read it);
    the log line beside it names the file for whoever runs the server."""
    log.error("Writing %s failed: %s", path, error)
    if error.errno == errno.ENOSPC:
        return StorageError("The disk holding the data folder is full; nothing was saved.")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError("The data folder is not writable; nothing was saved.")
    return StorageError(f"Could not write a file in the data folder ({error.strerror or error}); nothing was saved.")


def temp_file_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """A new, empty file in `path`'s folder (open for writing): (descriptor, name). Created as open() creates a file,
    0666 less the umask: mkstemp's 0600 stayed after the rename (a CLI --out, history PNGs and exports another user
    could not read)."""
    while True:
        name = str(path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[BinaryIO]:
    """A file to write `path` through: after the block it is complete under its final name (fsynced, renamed, folder
    fsynced); if the block or the write raises, no file is left at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = temp_file_beside(path, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(OSError):  # a file written over keeps its mode (where the filesystem has modes)
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def write_atomic(path: Path, data: bytes) -> None:
    """After this returns the file is complete under its final name; if it raises, no file is left at all."""
    try:
        with atomic_file(path) as handle:
            handle.write(data)
    except OSError as error:
        raise explain_os_error(error, path) from error


def encode_png(image: PILImage.Image, pnginfo) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def png_address(image: PILImage.Image) -> str:
    """The content address an init image or mask is stored under: the sha256 of its PNG (no metadata)."""
    return sha256(encode_png(image, None))


def encode_thumbnail(image: PILImage.Image, xmp: str | None = None) -> bytes:
    """A WebP thumbnail; `xmp` (storage/xmp.py) goes into its XMP chunk: the thumbnail discloses what the PNG does."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80, **({"xmp": xmp.encode("utf-8")} if xmp else {}))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remove_quietly(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
