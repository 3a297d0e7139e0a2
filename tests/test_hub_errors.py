"""One reading of the Hub's errors (krea2/hub_errors.py) behind both sentences: the checkpoints' loading and the LoRA
library's downloads. Real huggingface_hub exceptions, raised as diffusers raises them (wrapped in an OSError)."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from krea2.checkpoints import TURBO
from krea2.hub_errors import GATED, NO_FILE, NO_MEMORY, NO_REVISION, NOT_FOUND, OFFLINE, hub_problem
from krea2.loading import explain_load_error
from krea2.lora_library import explain_hub_error

RESPONSE = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/someone/style"))


def wrapped(inner: BaseException) -> OSError:
    """`inner` as the cause of an OSError, the way from_pretrained re-raises what the Hub said."""
    try:
        try:
            raise inner
        except BaseException as cause:
            raise OSError("Cannot load the model") from cause
    except OSError as outer:
        return outer


@pytest.mark.parametrize(
    ("inner", "kind", "loading_says", "lora_says"),
    [
        (GatedRepoError("Access restricted", response=RESPONSE), GATED, "no access to the gated repo",
         "No access to the gated repo"),
        (LocalEntryNotFoundError("Cannot find the requested files in the local cache"), OFFLINE,
         "is not in the local Hub cache", "is not in the local Hub cache"),
        (RevisionNotFoundError("Revision Not Found for url", response=RESPONSE), NO_REVISION,
         "was not found on the Hub", "has no such revision"),
        (EntryNotFoundError("Entry Not Found"), NO_FILE, "was not found on the Hub", "has no file style.safetensors"),
        (RepositoryNotFoundError("Repository Not Found", response=RESPONSE), NOT_FOUND, "was not found on the Hub",
         "was not found (or it is private"),
        (MemoryError(), NO_MEMORY, "not enough memory", "Could not download the LoRA someone/style: Cannot load"),
        (ValueError("a config key is odd"), None, "could not load someone/style: Cannot load the model",
         "Could not download the LoRA someone/style: Cannot load the model"),
    ],
)  # fmt: skip
def test_each_problem_is_read_once_and_said_by_both(tmp_path, inner, kind, loading_says, lora_says):
    error = wrapped(inner)
    assert hub_problem(error).kind == kind
    loading = str(explain_load_error(error, "someone/style", TURBO))
    lora = str(explain_hub_error(error, "someone/style", "style.safetensors", tmp_path))
    assert loading_says in loading and lora_says in lora, (loading, lora)
    assert "\n" not in loading + lora
