"""What went wrong on the way to the Hugging Face Hub, read once from whatever huggingface_hub (or diffusers on top of
it) raised. The checkpoints' loading (loading.py) and the LoRA library's downloads (lora_library.py) each say it in
their own sentence; which problem it was is decided here only."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlparse
from urllib.request import getproxies

GATED, OFFLINE, NO_REVISION, NO_FILE, NOT_FOUND, NO_MEMORY = (
    "gated", "offline", "no revision", "no file", "not found", "no memory"
)  # fmt: skip
# Phrases that mark a problem when the exception's type does not (diffusers re-raises the Hub's errors as OSError).
OFFLINE_PHRASES = ("offline", "connection", "cannot find the requested files in the local cache")
GATED_PHRASES = ("gated", "401", "403")


@dataclass(frozen=True)
class HubProblem:
    kind: str | None  # one of the names above, or None: something else
    first_line: str  # the error's own first line (or its type's name): what to quote for "something else"


def hub_problem(error: BaseException) -> HubProblem:
    """The problem an error (or an error it was raised from, up to ten deep) names, checked most specific first."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain).lower()

    def caused_by(*kinds: type[BaseException]) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if caused_by(GatedRepoError) or any(phrase in text for phrase in GATED_PHRASES):
        kind = GATED
    elif caused_by(LocalEntryNotFoundError, OfflineModeIsEnabled) or any(phrase in text for phrase in OFFLINE_PHRASES):
        kind = OFFLINE
    elif caused_by(RevisionNotFoundError):
        kind = NO_REVISION
    elif caused_by(EntryNotFoundError):
        kind = NO_FILE
    elif caused_by(RepositoryNotFoundError) or "not found" in text:
        kind = NOT_FOUND
    elif caused_by(MemoryError) or "out of memory" in text:
        kind = NO_MEMORY
    else:
        kind = None
    return HubProblem(kind, first)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a download from the Hub can start: not with HF_HUB_OFFLINE, else whether its endpoint (HF_ENDPOINT)
    takes a TCP connection within `timeout` seconds. Through a proxy the proxy decides, so it is assumed reachable.
    Asked before a download nobody waits for: offline, huggingface_hub retries each file for about 20 s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if {"https", "all"} & set(getproxies()):  # the standard proxy variables, as httpx reads them
        return True
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True
