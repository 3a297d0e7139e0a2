"""The content policy the settings ask for (krea2/content_filter.py applies it), and when it is required.

The Krea 2 Community License (section 4.2) makes whoever deploys the model implement content filtering. So the image
filter is on by default everywhere, and *required* wherever the app can be reached from another machine: a
non-loopback host (`--host 0.0.0.0`, the Docker image), or a Hugging Face Space. Required means fail closed: if the
classifier cannot load, every generation is refused with a sentence saying why and how to fix it, and turning the
filter off is refused at start-up. On loopback the operator alone uses the app: `KREA2_CONTENT_FILTER=off` turns the
filter off (the status line says so), and by default a classifier that cannot load is reported, not enforced.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from urllib.parse import urlsplit

from PIL import Image

from krea2.content_filter import BlocklistError, ContentPolicy, ImageClassifierFilter, PromptBlocklist, Verdict
from storage.records import NewGeneration

from .settings import SettingError, Settings

LOCAL_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the app on this machine: a loopback address or `localhost`. Any other name may
    resolve to an outside interface, so it counts as reachable."""
    name = host.strip().strip("[]").lower()
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def reachable_from(settings: Settings) -> str | None:
    """Why other machines can reach the app ("a Hugging Face Space", "host 0.0.0.0", "origin https://..."), or None
    when only this one can. An allowed origin that is not loopback is a reverse proxy's public URL: the app listens on
    127.0.0.1 behind it, and the world reaches it all the same."""
    if settings.space_id:
        return "a Hugging Face Space"
    host = settings.server_host
    if not is_loopback(host):
        return f"host {host}"
    public = [origin for origin in settings.allowed_origins if not is_loopback(urlsplit(origin).hostname or "")]
    return f"origin {public[0]}" if public else None


def content_policy(settings: Settings) -> ContentPolicy:
    """The policy for these settings (its classifier still to load: the manager loads it with the checkpoints).
    Raises SettingError when the filter is turned off where it is required, or the block list cannot be read."""
    reachable = reachable_from(settings)
    blocklist = None
    if settings.prompt_blocklist is not None:
        try:
            blocklist = PromptBlocklist.from_file(settings.prompt_blocklist)
        except BlocklistError as error:
            raise SettingError(f"KREA2_PROMPT_BLOCKLIST: {error}") from None
    if settings.content_filter is False:
        if reachable:
            raise SettingError(
                f"KREA2_CONTENT_FILTER=off is refused: the app is reachable from other machines ({reachable}), where "
                "the Krea 2 Community License (4.2) requires a content filter; it can be turned off only on 127.0.0.1"
            )
        return ContentPolicy(blocklist=blocklist, off_reason="turned off with KREA2_CONTENT_FILTER=off, loopback only")
    classifier = ImageClassifierFilter(settings.filter_model, settings.filter_labels, settings.filter_threshold)
    how_to_fix = (
        "Make KREA2_FILTER_MODEL name an image classifier this machine can download (network, HF_TOKEN) or a folder "
        "holding one, with KREA2_FILTER_LABELS among its labels, then restart"
        + ("." if reachable else "; on this machine alone you may instead set KREA2_CONTENT_FILTER=off.")
    )
    required = settings.content_filter is True or reachable is not None
    return ContentPolicy(classifier, blocklist, required=required, how_to_fix=how_to_fix)


class ImportScreen:
    """The content policy applied to a history import (storage.HistoryStore.import_archive's `screen`): an archive
    is a file from anywhere, and its pictures would be served like generated ones. An entry whose prompt matches the
    block list, or with an image the classifier flags, is imported as `blocked`, without its images and without the
    init image it names, as a generation the policy refused is recorded; an init image or mask the classifier flags
    is not kept, and the entries naming it come in without the link. A required filter that is not ready refuses the
    import (FilterUnavailable), as it refuses a generation."""

    def __init__(self, policy: ContentPolicy | None) -> None:
        self.policy = policy

    def flagged(self, picture: Image.Image) -> Verdict | None:
        """The classifier's verdict on `picture` when it blocks it, else None (also without a classifier)."""
        classifier = self.policy.ready_classifier("the import") if self.policy is not None else None
        if classifier is None:
            return None
        import numpy as np  # here: the request guards (ui/security.py) import this module for `is_loopback`
        import torch

        pixels = torch.from_numpy(np.asarray(picture.convert("RGB"))).permute(2, 0, 1)[None] / 255
        verdict = classifier.check(pixels)[0]
        return verdict if verdict.blocked else None

    def __call__(self, new: NewGeneration) -> NewGeneration:
        if self.policy is None:
            return new
        self.policy.ready_classifier("the import")  # a required filter not ready refuses even text-only entries
        blocklist = self.policy.blocklist
        line = blocklist.match(new.fields["prompt"]) if blocklist is not None else None
        reason = None
        if line is not None:
            reason = f"This prompt matches entry {line} of the server's block list, so it was imported without images."
        for item in new.images if reason is None else ():
            if verdict := self.flagged(item.image):
                reason = (f"The content filter flagged an imported image as {verdict.label} (score "
                          f"{verdict.score:.2f}), so it was imported without images.")  # fmt: skip
                break
        # The store adds a blocked entry without its images and init image, as it records a blocked generation.
        return new if reason is None else replace(new, fields={**new.fields, "status": "blocked", "error": reason})
