"""The copies Gradio keeps of the files it serves (its cache folder, `<sha256 of the content>/<file name>`, kept for
an hour by `delete_cache`): a deleted generation's picture stayed downloadable at its old URL until then (a hostile
pass). Deleting a generation removes them too."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from gradio.processing_utils import hash_file
from gradio.utils import get_upload_folder
from gradio_client.utils import strip_invalid_filename_characters

log = logging.getLogger(__name__)


def served_copies(files: Iterable[str | Path]) -> list[Path]:
    """Where Gradio's copies of `files` would be, found while the files still exist (their content names them)."""
    cache = Path(get_upload_folder())
    copies = []
    for file in files:
        try:
            copies.append(cache / hash_file(file) / strip_invalid_filename_characters(Path(file).name))
        except OSError:  # already gone: nothing was served from it since
            continue
    return copies


def remove_served_copies(copies: Iterable[Path]) -> None:
    for copy in copies:
        try:
            copy.unlink(missing_ok=True)
            copy.parent.rmdir()  # Gradio's folder for that content, empty now unless it holds another name
        except OSError:
            log.debug("Could not remove the served copy %s", copy, exc_info=True)
