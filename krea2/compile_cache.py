"""torch's own compile cache artifacts ("mega-cache"), kept as one file in the data folder.

`torch.compiler.save_cache_artifacts()` serialises everything the process compiled (inductor's FX graphs, AOT autograd
entries, Triton kernels and autotuning results); `load_cache_artifacts` puts them back into the local caches, so the
next compilation of the same graphs is a cache hit. The app's inductor and Triton cache folders already live in the
data folder (`studio.runtime.use_compile_cache`); this one file is the portable form of the same work: it survives a
machine whose cache folders are fresh (a new container on the same volume, a copied data folder), and it is what torch
documents for moving compile work between machines. The file is named by torch version and device, since its
artifacts only help where both match (torch checks its own keys on every hit anyway).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class CompileCache:
    """One artifacts file in `folder`, loaded before a compile warm-up and saved after it."""

    def __init__(self, folder: str | Path, device: str = "") -> None:
        tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"torch-{torch.__version__}-{device or 'cpu'}").strip("-")
        self.path = Path(folder).expanduser() / f"mega-cache-{tag}.bin"

    def load(self) -> bool:
        """Put the saved artifacts into torch's caches; False when there are none (or they cannot be read)."""
        if not self.path.is_file():
            return False
        start = time.perf_counter()
        try:
            info = torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except Exception as error:  # noqa: BLE001 - a stale or damaged file must not stop the app: compile afresh
            log.warning("Compile cache %s not loaded (%s): compiling afresh", self.path, error)
            return False
        counts = {kind: len(keys) for kind, keys in (info.artifacts if info else {}).items()}
        log.info("Compile cache loaded in %.1f s from %s: %s", time.perf_counter() - start, self.path, counts)
        return info is not None

    def save(self) -> int:
        """Write what this process compiled (loaded artifacts included); returns the bytes written (0: nothing)."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return 0
        data, _info = artifacts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(self.path)  # atomic: a crash leaves the previous file, never half of one
        log.info("Compile cache saved: %s (%.1f MB)", self.path, len(data) / 1e6)
        return len(data)
