"""The benchmarks' `--smoke` runs as CI runs them: each bench script end to end on the demo checkpoints on the CPU, so
that a GPU benchmark cannot rot between GPU sessions. Their numbers mean nothing; their fields are the GPU run's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(script: str, *args: str, out: Path, result: str, timeout: int = 600) -> dict[str, Any]:
    """Run `python bench/<script> --smoke <args> --out <out>` from the repository root; it must succeed and write
    exactly one JSON whose name matches the glob `result`, which is returned, read."""
    command = [sys.executable, f"bench/{script}", "--smoke", *args, "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = Path(out).glob(result)
    return json.loads(path.read_text())
