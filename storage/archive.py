"""History export and import: one zip with history.json, history.csv, the PNGs as stored and the init images and
masks the generations started from (`sources/<sha256>.png`, once each, as the data folder keeps them).

Only the columns in EXPORTED travel (ids, paths and repair flags are this data folder's own), and an import checks
every value it takes: an archive is a file from anywhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from PIL import Image as PILImage

from .errors import StorageError
from .files import atomic_file
from .models import Generation
from .records import NewGeneration, NewImage

log = logging.getLogger(__name__)
FORMAT = "krea2-studio-history/1"
EXPORTED = ("created_at", "checkpoint", "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height",
            "num_images", "status", "error", "encode_ms", "denoise_ms", "decode_ms", "total_ms", "device", "placement",
            "app_version", "favorite", "comparison_id", "mode", "strength", "source_sha256", "mask_sha256")  # fmt: skip
TYPES: dict[str, tuple[type, ...]] = {
    "checkpoint": (str,), "prompt": (str,), "negative_prompt": (str,), "seed": (int, type(None)), "steps": (int,),
    "guidance": (float, int), "width": (int,), "height": (int,), "num_images": (int,), "status": (str,),
    "error": (str, type(None)), "encode_ms": (int, type(None)), "denoise_ms": (int, type(None)),
    "decode_ms": (int, type(None)), "total_ms": (int, type(None)), "device": (str,), "placement": (str,),
    "app_version": (str,), "favorite": (bool,), "comparison_id": (str, type(None)), "mode": (str,),
    "strength": (float, int, type(None)), "source_sha256": (str, type(None)), "mask_sha256": (str, type(None)),
}  # fmt: skip
SOURCE_COLUMNS = ("source_sha256", "mask_sha256")  # content addresses of files under sources/ (None: none)
SOURCES_FOLDER = "sources"  # in the zip: sources/<sha256>.png, each file once however many rows share it
CONTENT_ADDRESS = re.compile(r"[0-9a-f]{64}")
LORA_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "hash": (str,), "weight": (float, int), "checkpoint": (str,)}
MAX_LORAS = 16  # per generation, in an import (the app applies at most 4)
MAX_GENERATIONS = 100_000
# history.json is read whole into memory, and a zip of a few hundred KB can hold gigabytes of it. 512 MB holds
# MAX_GENERATIONS rows of ~5 KB each (exports write text as UTF-8, not \u escapes: a long CJK prompt ~6 KB).
MAX_HISTORY_JSON_BYTES = 512 * 2**20
MAX_INTEGER = 2**63 - 1  # a database integer's range (a larger one failed the import with an OverflowError)
MAX_ID_CHARS = 64  # comparison ids are 32 hex digits
Progress = Callable[[int, int], None]  # (done, total) generations of an export or import
EntryCheck = Callable[[dict[str, Any]], None]  # raises ValueError(field name) for an entry the app could not have made


class ImportScreen(Protocol):
    """The app's content policy on an import (studio.safety.ImportScreen): an entry as it may be added, and whether a
    picture (an init image or mask) is flagged."""

    def __call__(self, new: NewGeneration) -> NewGeneration: ...

    def flagged(self, picture: PILImage.Image) -> Any: ...


MAX_IMAGE_BYTES = 64 * 2**20
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Every JSON object and array costs Python ~60-200 bytes: 512 MB of "{}," parses into ~13 GB. A real entry holds a
# few (itself, its images, its LoRAs), so this many, counted before parsing, is far above any export of
# MAX_GENERATIONS entries and keeps a hostile file under ~1 GB.
MAX_JSON_CONTAINERS = 64 * MAX_GENERATIONS
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
MAX_PIXELS = 2048 * 2048


def _row(generation: Generation) -> dict[str, Any]:
    values = {name: getattr(generation, name) for name in EXPORTED}
    at = generation.created_at
    values["created_at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
    values["loras"] = [{name: getattr(lora, name) for name in LORA_TYPES} for lora in generation.loras]
    return values


def source_name(digest: str) -> str:
    """Where the init image or mask stored under `digest` stands in the zip."""
    return f"{SOURCES_FOLDER}/{digest}.png"


def write_archive(
    target: Path,
    rows: list[Generation],
    absolute: Callable[[str], Path],
    source_file: Callable[[str], Path],
    on_progress: Progress | None = None,
) -> None:
    """The zip is written to a temporary file beside `target` and renamed: a reader never sees half an archive.
    `source_file(digest)`: the data folder's file of an init image or mask. One lost on disk is left out and its row
    travels without the link (the mode and strength stay), so the archive holds every source its rows name.
    `on_progress(done, total)`: after each generation written."""
    target = Path(target)
    try:
        # The zip is closed (its central directory written) inside the block, before atomic_file fsyncs and renames.
        with atomic_file(target, suffix=".zip") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            records, table = [], io.StringIO()
            writer = csv.DictWriter(table, [*EXPORTED, "loras", "images"])
            writer.writeheader()
            written_sources: set[str] = set()
            for generation in rows:
                record = _row(generation)
                for column in SOURCE_COLUMNS:
                    digest = record[column]
                    if digest is None or digest in written_sources:
                        continue
                    path = source_file(digest)
                    if path.is_file():
                        archive.write(path, source_name(digest))
                        written_sources.add(digest)
                    else:
                        log.warning("Export: the init image %s of generation %s is gone; exported without it",
                                    digest[:10], generation.id)  # fmt: skip
                        record[column] = None
                files = []
                for image in generation.images:
                    name = f"images/{generation.id:06d}-{image.position}.png"
                    path = absolute(image.path)
                    if path.exists():  # a file lost on disk is left out; the row still travels
                        archive.write(path, name)
                        files.append({"file": name, "seed": image.seed, "position": image.position})
                record["images"] = files
                records.append(record)
                loras = " ".join(f"{lora['name']}:{lora['weight']:g}" for lora in record["loras"])
                cells = {**record, "loras": loras, "images": " ".join(f["file"] for f in files)}
                writer.writerow({name: spreadsheet_safe(value) for name, value in cells.items()})
                if on_progress is not None:
                    on_progress(len(records), len(rows))
            document = json.dumps({"format": FORMAT, "generations": records}, indent=1, ensure_ascii=False)
            archive.writestr("history.json", document.encode("utf-8"))
            archive.writestr("history.csv", table.getvalue())
    except OSError as error:
        raise StorageError(f"Could not write the export {target.name}: {error.strerror or error}.") from error


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (or a tab or CR) would be run as a formula
    (a prompt `=HYPERLINK(...)` opened in Excel), so it gets a leading apostrophe, as OWASP advises. history.json,
    which the import reads, keeps the text as it is."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value


def _checked(record: Any, index: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise StorageError(f"Entry {index + 1} of history.json is not a generation.")
    fields: dict[str, Any] = {}
    for name, types in TYPES.items():
        value = record.get(name, "" if str in types else None)
        if name == "favorite":
            value = record.get("favorite", False)  # a real true or false: bool("no") is True
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types) or not _storable(value):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid {name}.")
        fields[name] = value
    if fields["comparison_id"] is not None and len(fields["comparison_id"]) > MAX_ID_CHARS:
        raise StorageError(f"Entry {index + 1} of history.json has an invalid comparison_id.")
    try:
        created = datetime.fromisoformat(str(record.get("created_at")))
        created = created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # year 1 at +05:00 is before year 1 in UTC
        raise StorageError(f"Entry {index + 1} of history.json has an invalid created_at.") from None
    fields["created_at"] = created
    images = record.get("images") or []
    if not isinstance(images, list):
        raise StorageError(f"Entry {index + 1} of history.json has an invalid list of images.")
    # Counted before any image is read: one small PNG listed 150 times under one entry was decoded 150 times (3 GB)
    # before this refusal came (a hostile pass).
    if len(images) > fields["num_images"]:
        raise StorageError(f"Entry {index + 1} of history.json has more images than its num_images.")
    if fields["status"] not in ("ok", "failed", "cancelled", "interrupted", "blocked"):
        fields["status"] = "interrupted"  # an export taken mid-run: that run never finished
    return _checked_source(fields, index)


def _storable(value: Any) -> bool:
    """A value a database column holds as it is: an integer within 64 bits, a finite float, text without NUL that
    UTF-8 can encode (JSON's "\\ud800" decodes to a lone surrogate, which the database driver refused)."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -MAX_INTEGER <= value <= MAX_INTEGER
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    return True


def _checked_source(fields: dict[str, Any], index: int) -> dict[str, Any]:
    """What an entry started from (exports older than image inputs say nothing: text-to-image)."""
    fields["mode"] = fields["mode"] or "txt2img"
    strength = fields["strength"]
    if not re.fullmatch(r"[a-z0-9]{1,16}", fields["mode"]) or isinstance(strength, bool):
        raise StorageError(f"Entry {index + 1} of history.json has an invalid mode or strength.")
    if strength is not None and not (math.isfinite(strength) and 0 < strength <= 1):
        raise StorageError(f"Entry {index + 1} of history.json has an invalid mode or strength.")
    for column in SOURCE_COLUMNS:
        if fields[column] is not None and not CONTENT_ADDRESS.fullmatch(fields[column]):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid {column}.")
    if fields["mask_sha256"] is not None and fields["source_sha256"] is None:
        raise StorageError(f"Entry {index + 1} of history.json has a mask without an init image.")
    return fields


def _checked_loras(record: dict, index: int) -> list[dict[str, Any]]:
    """An exported generation's LoRAs (older exports have none)."""
    loras = record.get("loras") or []
    if not isinstance(loras, list) or len(loras) > MAX_LORAS:
        raise StorageError(f"Entry {index + 1} of history.json has an invalid list of LoRAs.")
    checked = []
    for lora in loras:
        if not isinstance(lora, dict) or any(
            isinstance(lora.get(name), bool) or not isinstance(lora.get(name), types)
            for name, types in LORA_TYPES.items()
        ):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid LoRA.")
        too_long = len(lora["name"]) > 255 or len(lora["hash"]) > 64 or len(lora["checkpoint"]) > 16
        if too_long or not all(_storable(lora[name]) for name in LORA_TYPES):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid LoRA.")
        checked.append({name: lora[name] for name in LORA_TYPES})
    return checked


# How zipfile says a member cannot be read: a CRC that does not match or a cut-off member (BadZipFile, OSError,
# EOFError), a password (RuntimeError), a compression method it lacks (NotImplementedError).
UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError)


def unreadable(error: BaseException) -> str:
    """Why a zip member cannot be read, after "<name> in that zip": a sentence's end."""
    if isinstance(error, RuntimeError) and "encrypted" in str(error):
        return "is encrypted (exports are not; unzip it with its password and zip it again without one)"
    if isinstance(error, NotImplementedError):
        return "is compressed in a way this app cannot read (exports are stored uncompressed or deflated)"
    return "is corrupt (it cannot be read back)"


class ArchiveReader:
    """A history export opened for import. Opening reads history.json and checks every entry (its values and LoRAs):
    an archive with a bad entry is refused before anything is written. The sources (init images, masks) and images
    are read, and checked, when asked for. Use it as a context manager (it holds the zip open)."""

    def __init__(self, source: Path, check: EntryCheck | None = None) -> None:
        """`check`: the app's own test of an entry's values (its request's ranges and choices), which the history
        does not know; it raises ValueError naming the field."""
        try:
            self._zip = zipfile.ZipFile(source)
        except (OSError, zipfile.BadZipFile):
            raise StorageError("That file is not a history export (not a zip archive).") from None
        try:
            records = self._records()
            self._names = set(self._zip.namelist())
            self._entries = [(record, _checked(record, i), _checked_loras(record, i)) for i, record in
                             enumerate(records)]  # fmt: skip
            for index, (_record, fields, loras) in enumerate(self._entries):
                try:
                    if check is not None:
                        check({**fields, "loras": loras})
                except ValueError as error:
                    raise StorageError(f"Entry {index + 1} of history.json has an invalid {error}.") from None
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._zip.close()

    def _records(self) -> list[Any]:
        try:
            if self._zip.getinfo("history.json").file_size > MAX_HISTORY_JSON_BYTES:
                raise StorageError(f"The history.json in that zip is larger than {MAX_HISTORY_JSON_BYTES // 2**20} MB.")
            text = self._zip.read("history.json")
            structure = JSON_STRING.sub(b"", text)  # the brackets of A1111-style prompts are not containers
            if structure.count(b"{") + structure.count(b"[") > MAX_JSON_CONTAINERS:
                raise StorageError("The history.json in that zip has far more entries than an export can hold.")
            document = json.loads(text)
        except KeyError:
            raise StorageError("That zip is not a history export (it has no history.json).") from None
        except ValueError:
            raise StorageError("The history.json in that zip is not valid JSON.") from None
        except UNREADABLE as error:
            raise StorageError(f"The history.json in that zip {unreadable(error)}.") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            given = document.get("format") if isinstance(document, dict) else None
            if isinstance(given, str) and given.startswith(FORMAT.rsplit("/", 1)[0] + "/"):
                raise StorageError(f"That export is in another version's format ({given[:40]}); this app reads "
                                   f"{FORMAT}. Import it with the version that wrote it, or a newer one.")  # fmt: skip
            raise StorageError("That zip is not a Krea 2 Studio history export.")
        records = document.get("generations")
        if not isinstance(records, list) or len(records) > MAX_GENERATIONS:
            raise StorageError("The history.json in that zip has no usable list of generations.")
        return records

    def sources(self) -> dict[str, int]:
        """Every init image and mask the entries name (content address -> the first entry naming it, from 0)."""
        named: dict[str, int] = {}
        for index, (_record, fields, _loras) in enumerate(self._entries):
            for column in SOURCE_COLUMNS:
                if fields[column] is not None:
                    named.setdefault(fields[column], index)
        return named

    def source_png(self, digest: str) -> bytes:
        """The file of a source the entries name, as the zip holds it; refused with a sentence when the zip lacks it
        or it is not the PNG its content address names (an archive is a file from anywhere, and rows point at it)."""
        name = source_name(digest)
        if name not in self._names:
            entry = self.sources().get(digest, 0) + 1
            raise StorageError(f"Entry {entry} of history.json names an init image ({digest[:10]}) that the zip "
                               "does not hold.")  # fmt: skip
        png = self._member(name, "an init image")
        if hashlib.sha256(png).hexdigest() != digest:
            raise StorageError(f"{name} in that zip is corrupt (its content does not match its name).")
        _checked_png(png, name)
        return png

    def __len__(self) -> int:
        return len(self._entries)

    def generations(self) -> Iterator[NewGeneration]:
        """The NewGeneration of each exported generation; the PNGs keep their bytes (and so their metadata)."""
        for index, (record, fields, loras) in enumerate(self._entries):
            images = []
            for item in record.get("images") or []:
                name = item.get("file") if isinstance(item, dict) else None
                seed = item.get("seed") if isinstance(item, dict) else None
                if name not in self._names:
                    raise StorageError(f"Entry {index + 1} of history.json names an image the zip does not hold.")
                if not (seed is None or type(seed) is int) or not _storable(seed):
                    raise StorageError(f"Entry {index + 1} of history.json has an image with an invalid seed.")
                png = self._member(name, "an image")
                images.append(NewImage(_checked_png(png, name), seed, png))
            yield NewGeneration(fields, images, loras=loras)

    def _member(self, name: str, what: str) -> bytes:
        if self._zip.getinfo(name).file_size > MAX_IMAGE_BYTES:
            raise StorageError(f"{name} in that zip is too large to be {what} of this app.")
        try:
            return self._zip.read(name)
        except UNREADABLE as error:
            raise StorageError(f"{name} in that zip {unreadable(error)}.") from None


def _checked_png(png: bytes, name: str) -> PILImage.Image:
    """A PNG of this app's sizes, decoded (an upload's bomb or a truncated file is refused with a sentence)."""
    try:
        image = PILImage.open(io.BytesIO(png))
        if image.format != "PNG" or image.width * image.height > MAX_PIXELS:
            raise StorageError(f"{name} in that zip is not a PNG of at most 2048×2048.")
        image.load()
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError):  # ValueError: a text chunk over 1 MB
        raise StorageError(f"{name} in that zip is not a readable PNG.") from None
    return image
