"""Files a client uploaded, as the API's file fields name them: only what is in Gradio's upload folder is taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder

from krea2 import InvalidRequest


def uploaded_path(value: Any, field: str = "image") -> str | None:
    """The server-side path of a file a client uploaded, resolved. The endpoints take their values unprocessed
    (`preprocess=False`); Gradio 6.31 still refuses a path outside its upload folder before the handler runs, and
    this checks it again so that the app does not rest on that: a caller naming any image on the server would have
    it stored in history and served back. The refusal does not echo the path, nor say whether it exists."""
    if value is None or value == "":
        return None
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", None)
    refused = InvalidRequest(field, None, "must be a file uploaded with this request (gradio_client's handle_file)")
    if not isinstance(path, str) or not path:
        raise refused
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte; a loop of links (RuntimeError before Python 3.13)
        raise refused from None
    if not resolved.is_relative_to(Path(get_upload_folder()).resolve()):
        raise refused
    return str(resolved)
