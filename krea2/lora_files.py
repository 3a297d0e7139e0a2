"""A LoRA file on disk: read safely, and named by the hash other tools know it by.

Only `.safetensors` files are read: a pickled `.pt`/`.ckpt` file can run code when it is loaded. The file's structure
(the 8-byte header length, the JSON header, the data that follows) is checked before a tensor is used, and every way
a file can be unusable is one sentence naming it.

The hash is AutoV3, the one Civitai computes for LoRAs and A1111/Forge write into `Lora hashes`: the SHA-256 of the
tensor data alone, everything after the header (kohya's `addnet_hash_safetensors`). Editing a file's metadata leaves it
unchanged; the short form is its first 12 hex digits, as A1111 writes it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LoraError

SUFFIX = ".safetensors"
SHORT_HASH_CHARS = 12
HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit for the JSON header
_CHUNK = 2**20


@dataclass(frozen=True)
class LoraContents:
    """A LoRA file's tensors (on the CPU, as stored) and its string metadata (`__metadata__`)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def short_hash(autov3: str) -> str:
    return autov3[:SHORT_HASH_CHARS]


def header_length(path: Path, shown: str) -> int:
    """The JSON header's length in bytes, checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(HEADER_LENGTH_BYTES)
    except OSError as error:
        raise LoraError(f"The LoRA {shown} cannot be read ({error.strerror or type(error).__name__}).") from error
    if size == 0:
        raise LoraError(f"The LoRA {shown} is an empty file.")
    if len(head) < HEADER_LENGTH_BYTES:
        raise LoraError(f"The LoRA {shown} is not a .safetensors file (it is too short to hold a header).")
    (length,) = struct.unpack("<Q", head)
    if length == 0 or length > MAX_HEADER_BYTES or HEADER_LENGTH_BYTES + length > size:
        raise LoraError(f"The LoRA {shown} is not a .safetensors file (its header length does not fit the file).")
    return length


def read_header(path: Path, shown: str) -> tuple[dict, int]:
    """The JSON header as a table naming at least one tensor, and its length; LoraError otherwise. The hash reads it
    too: a file whose header was not JSON was listed with the hash of nothing (e3b0c442...) and no problem."""
    length = header_length(path, shown)
    try:
        with path.open("rb") as handle:
            handle.seek(HEADER_LENGTH_BYTES)
            header = json.loads(handle.read(length))
    except (OSError, ValueError, RecursionError) as error:
        raise LoraError(f"The LoRA {shown} is not a .safetensors file (its header is not valid JSON).") from error
    if not isinstance(header, dict):
        raise LoraError(f"The LoRA {shown} is not a .safetensors file (its header is not a table of tensors).")
    if not any(key != "__metadata__" for key in header):
        raise LoraError(f"The LoRA {shown} holds no tensors.")
    return header, length


def autov3_hash(path: Path, shown: str | None = None) -> str:
    """The file's AutoV3 hash (64 hex digits): SHA-256 of everything after the header."""
    shown = shown or path.name
    offset = HEADER_LENGTH_BYTES + read_header(path, shown)[1]
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise LoraError(f"The LoRA {shown} cannot be read ({error.strerror or type(error).__name__}).") from error
    return digest.hexdigest()


def require_safetensors(filename: str) -> None:
    """Refuse a file name (an upload's, a Hub file's) that is not a `.safetensors` file's."""
    if Path(filename).suffix.lower() != SUFFIX:
        raise LoraError(
            f"The file {Path(filename).name} is not a .safetensors file; only .safetensors LoRAs are taken (a .pt or "
            ".ckpt file can run code when it is loaded)."
        )


def read_lora(path: Path, shown: str | None = None) -> LoraContents:
    """Every tensor and the metadata of a `.safetensors` LoRA file (whatever the path's own suffix: an upload waits
    under a temporary name), or LoraError saying why it cannot be used."""
    from safetensors import SafetensorError, safe_open

    shown = shown or path.name
    read_header(path, shown)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise LoraError(
            f"The LoRA {shown} is not a readable .safetensors file (its header does not match its data)."
        ) from error
    return LoraContents(tensors, metadata)
