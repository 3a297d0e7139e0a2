"""A `.safetensors` file read tensor by tensor: its header checked against the file's size, each tensor read straight
into the memory it will keep.

The `safetensors` library maps the whole file into memory; every page it touches then counts in the process's
resident memory next to the copies made from it, which is how a single-file load ends up at twice the file's size. This
reader parses the same header (an 8-byte length, a JSON table of name -> dtype, shape and byte range, the data after
it) and fills each tensor with one `readinto` into the tensor's own storage: no mapping, no intermediate buffer. It
also checks, before reading anything, that every byte range lies inside the file, so a truncated download is one clear
sentence instead of a crash halfway through a load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# The safetensors format's dtype names (https://github.com/huggingface/safetensors, `Dtype`).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024**2  # the format's own limit


class UnreadableFile(ValueError):
    """The file is not a complete `.safetensors` file; the message is one sentence saying why."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsFile:
    """The header of one `.safetensors` file (`entries`, `metadata`), checked on opening; `read` loads one tensor."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.size = self.path.stat().st_size
        self.entries, self.metadata = _read_header(self.path, self.size)

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, read into `out` (same number of bytes, e.g. a slice of a larger tensor) or a new one."""
        entry = self.entries[name]
        tensor = torch.empty(entry.shape, dtype=entry.dtype) if out is None else out
        if tensor.numel() * tensor.element_size() != entry.nbytes or not tensor.is_contiguous():
            raise ValueError(f"{name}: {entry.nbytes} bytes do not fill a {tuple(tensor.shape)} {tensor.dtype} tensor")
        if entry.nbytes:
            buffer = tensor.reshape(-1).view(torch.uint8).numpy()  # the tensor's own storage, as writable bytes
            with self.path.open("rb", buffering=0) as file:
                file.seek(entry.start)
                if file.readinto(buffer) != entry.nbytes:
                    raise UnreadableFile(f"{self.path} ended while reading {name}: the file is truncated.")
        return tensor


def _read_header(path: Path, size: int) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    with path.open("rb") as file:
        first = file.read(8)
        if len(first) < 8:
            raise UnreadableFile(f"{path} is not a .safetensors file (only {size} bytes long).")
        length = int.from_bytes(first, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise UnreadableFile(
                f"{path} is not a .safetensors file, or it is truncated (its header claims {length} bytes of a "
                f"{size}-byte file)."
            )
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UnreadableFile(f"{path} is not a .safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise UnreadableFile(f"{path} is not a .safetensors file (its header is not a table of tensors).")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + length
    entries: dict[str, TensorEntry] = {}
    furthest = data_start
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(side) for side in info["shape"])
            start, end = (data_start + int(offset) for offset in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            kind = info.get("dtype") if isinstance(info, dict) else None
            if kind is not None and kind not in DTYPES:
                raise UnreadableFile(f"{path}: tensor {name} has the dtype {kind}, which cannot be loaded.") from None
            raise UnreadableFile(f"{path} is not a .safetensors file (its entry for {name} is malformed).") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - start != math.prod(shape) * itemsize or start < data_start:
            raise UnreadableFile(f"{path} is damaged: tensor {name}'s byte range does not match its shape.")
        entries[name] = TensorEntry(name, dtype, shape, start, end)
        furthest = max(furthest, end)
    if furthest > size:
        raise UnreadableFile(
            f"{path} is truncated: it is {size:,} bytes long but its tensors need {furthest:,} (an interrupted "
            "download? download it again)."
        )
    return entries, {str(key): str(value) for key, value in metadata.items()}


def names_a_file(source: str) -> bool:
    """Whether a checkpoint source names a single file (by its suffix, or an existing file), not a folder or a repo."""
    path = Path(source).expanduser()
    return path.suffix.lower() in (".safetensors", ".sft", ".gguf") or (path.is_file() and not path.is_dir())
