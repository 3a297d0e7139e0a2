"""History export and import: one zip with history.json, history.csv and the PNGs as stored.

Only the columns in EXPORTED travel (ids, paths and repair flags are this data folder's own), and an import checks
every value it takes: an archive is a file from anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from .errors import StorageError
from .files import atomic_file
from .models import Generation
from .records import NewGeneration, NewImage

FORMAT = "krea2-studio-history/1"
EXPORTED = ("created_at", "checkpoint", "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height",
            "num_images", "status", "error", "encode_ms", "denoise_ms", "decode_ms", "total_ms", "device", "placement",
            "app_version", "favorite", "comparison_id")  # fmt: skip
TYPES: dict[str, tuple[type, ...]] = {
    "checkpoint": (str,), "prompt": (str,), "negative_prompt": (str,), "seed": (int, type(None)), "steps": (int,),
    "guidance": (float, int), "width": (int,), "height": (int,), "num_images": (int,), "status": (str,),
    "error": (str, type(None)), "encode_ms": (int, type(None)), "denoise_ms": (int, type(None)),
    "decode_ms": (int, type(None)), "total_ms": (int, type(None)), "device": (str,), "placement": (str,),
    "app_version": (str,), "favorite": (bool,), "comparison_id": (str, type(None)),
}  # fmt: skip
LORA_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "hash": (str,), "weight": (float, int), "checkpoint": (str,)}
MAX_LORAS = 16  # per generation, in an import (the app applies at most 4)
MAX_GENERATIONS = 100_000
MAX_IMAGE_BYTES = 64 * 2**20
MAX_PIXELS = 2048 * 2048


def _row(generation: Generation) -> dict[str, Any]:
    values = {name: getattr(generation, name) for name in EXPORTED}
    at = generation.created_at
    values["created_at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
    values["loras"] = [{name: getattr(lora, name) for name in LORA_TYPES} for lora in generation.loras]
    return values


def write_archive(target: Path, rows: list[Generation], absolute: Callable[[str], Path]) -> None:
    """The zip is written to a temporary file beside `target` and renamed: a reader never sees half an archive."""
    target = Path(target)
    try:
        # The zip is closed (its central directory written) inside the block, before atomic_file fsyncs and renames.
        with atomic_file(target, suffix=".zip") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            records, table = [], io.StringIO()
            writer = csv.DictWriter(table, [*EXPORTED, "loras", "images"])
            writer.writeheader()
            for generation in rows:
                record = _row(generation)
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
                writer.writerow({**record, "loras": loras, "images": " ".join(f["file"] for f in files)})
            archive.writestr("history.json", json.dumps({"format": FORMAT, "generations": records}, indent=1))
            archive.writestr("history.csv", table.getvalue())
    except OSError as error:
        raise StorageError(f"Could not write the export {target.name}: {error.strerror or error}.") from error


def _checked(record: Any, index: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise StorageError(f"Entry {index + 1} of history.json is not a generation.")
    fields: dict[str, Any] = {}
    for name, types in TYPES.items():
        value = record.get(name, "" if str in types else None)
        if name == "favorite":
            value = bool(record.get("favorite", False))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid {name}.")
        fields[name] = value
    try:
        created = datetime.fromisoformat(str(record.get("created_at")))
    except ValueError:
        raise StorageError(f"Entry {index + 1} of history.json has an invalid created_at.") from None
    fields["created_at"] = created if created.tzinfo else created.replace(tzinfo=UTC)
    if fields["status"] not in ("ok", "failed", "cancelled", "interrupted", "blocked"):
        fields["status"] = "interrupted"  # an export taken mid-run: that run never finished
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
        if too_long or not math.isfinite(lora["weight"]):
            raise StorageError(f"Entry {index + 1} of history.json has an invalid LoRA.")
        checked.append({name: lora[name] for name in LORA_TYPES})
    return checked


def read_archive(source: Path) -> Iterator[NewGeneration]:
    """The NewGeneration of each exported generation, checked; the PNGs keep their bytes (and so their metadata)."""
    try:
        archive = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile):
        raise StorageError("That file is not a history export (not a zip archive).") from None
    with archive:
        try:
            document = json.loads(archive.read("history.json"))
        except KeyError:
            raise StorageError("That zip is not a history export (it has no history.json).") from None
        except ValueError:
            raise StorageError("The history.json in that zip is not valid JSON.") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StorageError("That zip is not a Krea 2 Studio history export.")
        records = document.get("generations")
        if not isinstance(records, list) or len(records) > MAX_GENERATIONS:
            raise StorageError("The history.json in that zip has no usable list of generations.")
        names = set(archive.namelist())
        for index, record in enumerate(records):
            fields = _checked(record, index)
            loras = _checked_loras(record, index)
            images = []
            for item in record.get("images") or []:
                name = item.get("file") if isinstance(item, dict) else None
                seed = item.get("seed") if isinstance(item, dict) else None
                if name not in names or not (seed is None or type(seed) is int):
                    raise StorageError(f"Entry {index + 1} of history.json names an image the zip does not hold.")
                if archive.getinfo(name).file_size > MAX_IMAGE_BYTES:
                    raise StorageError(f"{name} in that zip is too large to be an image of this app.")
                png = archive.read(name)
                try:
                    image = PILImage.open(io.BytesIO(png))
                    if image.format != "PNG" or image.width * image.height > MAX_PIXELS:
                        raise StorageError(f"{name} in that zip is not a PNG of at most 2048×2048.")
                    image.load()
                except (OSError, PILImage.DecompressionBombError):
                    raise StorageError(f"{name} in that zip is not a readable PNG.") from None
                images.append(NewImage(image, seed, png))
            yield NewGeneration(fields, images, loras=loras)
