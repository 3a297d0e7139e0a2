"""Where history lives: the data folder (images) and the database URL."""

from __future__ import annotations

import os
from pathlib import Path

SPACES_DATA_DIR = Path("/data")  # Hugging Face Spaces persistent storage


def default_data_dir() -> Path:
    if env := os.environ.get("KREA2_DATA_DIR"):
        return Path(env).expanduser()
    if SPACES_DATA_DIR.is_dir() and os.access(SPACES_DATA_DIR, os.W_OK):
        return SPACES_DATA_DIR
    return Path("data")


def default_database_url(data_dir: Path) -> str:
    return os.environ.get("KREA2_DATABASE_URL") or f"sqlite:///{(data_dir / 'history.sqlite3').resolve()}"
