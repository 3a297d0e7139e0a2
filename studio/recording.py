"""Turns engine results into history records (the only place that knows both sides' shapes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krea2.lora_files import short_hash
from storage import HistoryStore, NewGeneration, NewImage
from storage.models import Generation

if TYPE_CHECKING:
    from krea2.generation import AppliedLora
    from krea2.manager import GenerationResult
    from krea2.request import GenerationRequest

APP_VERSION = "0.1.0"


# The settings a generation is made from: the same names on GenerationRequest, the Generation row, and the JSON
# chunk of every PNG, so "reuse settings" and "send to Generate" can copy them across.
SETTINGS_FIELDS = ("prompt", "negative_prompt", "checkpoint", "steps", "guidance", "width", "height", "seed")


def settings_of(source: Any) -> dict[str, Any]:
    """The SETTINGS_FIELDS of a request or a history row."""
    return {name: getattr(source, name) for name in SETTINGS_FIELDS}


def _request_fields(request: GenerationRequest) -> dict[str, Any]:
    # The negative prompt the image was made with (none when guidance is off), as in the PNG: a row must not claim a
    # negative prompt the model never saw.
    return {
        **settings_of(request),
        "negative_prompt": request.effective_negative_prompt or "",
        "num_images": request.num_images,
        "app_version": APP_VERSION,
        **source_fields(request),
    }


def source_fields(request: GenerationRequest) -> dict[str, Any]:
    """The Generation columns that say what a generation started from (all None/txt2img for text-to-image)."""
    source = request.source
    return {
        "mode": request.mode,
        "strength": source.strength if source else None,
        "source_sha256": source.image_sha256 if source else None,
        "mask_sha256": source.mask_sha256 if source else None,
    }


def record_start(store: HistoryStore, request: GenerationRequest, comparison_id: str | None = None) -> Generation:
    """A `running` row for a generation that starts now, so a crash leaves a trace (repair marks it `interrupted`).
    The seed is filled in at the end when it is drawn at random, the LoRAs' hashes once their files are read."""
    return store.start({**_request_fields(request), "comparison_id": comparison_id}, requested_loras(request))


def png_parameters(request: GenerationRequest, loras: list[AppliedLora] | None = None) -> dict[str, Any]:
    """What each PNG carries: the request, with the LoRAs the image was made with (`loras`: with their hashes)."""
    return {
        **request.to_dict(),
        "negative_prompt": request.effective_negative_prompt or "",
        "model": request.spec.display_name,
        "app": f"Krea 2 Studio {APP_VERSION}",
        "loras": [{"name": c.name, "weight": c.weight} for c in request.active_loras]
        if loras is None
        else [{"name": lora.name, "weight": lora.weight, "hash": short_hash(lora.hash)} for lora in loras],
    }


def requested_loras(request: GenerationRequest) -> list[dict[str, Any]]:
    """The LoRAs a request runs with, as history records them before their files are read (no hash yet)."""
    return [{"name": c.name, "weight": c.weight, "checkpoint": request.checkpoint} for c in request.active_loras]


def applied_loras(loras: list[AppliedLora]) -> list[dict[str, Any]]:
    return [{"name": x.name, "hash": x.hash, "weight": x.weight, "checkpoint": x.checkpoint} for x in loras]


def loras_of(generation: Generation) -> list[dict[str, Any]]:
    """A history row's LoRAs as a request takes them back ("Reuse settings"), with the hash that finds a renamed
    file."""
    return [{"name": lora.name, "weight": lora.weight, "hash": lora.hash} for lora in generation.loras]


def record_result(
    store: HistoryStore,
    result: GenerationResult,
    comparison_id: str | None = None,
    running: Generation | None = None,
) -> Generation:
    """Record a finished generation: a new row, or the `running` row of `record_start` finalised."""
    fields = {
        **_request_fields(result.request),
        **result.timings.as_ms(),
        "status": "ok",
        "device": result.device,
        "placement": result.placement,
        "comparison_id": comparison_id,
    }
    images = [NewImage(image, seed) for image, seed in zip(result.images, result.seeds, strict=True)]
    new = NewGeneration(fields, images, png_parameters(result.request, result.loras), applied_loras(result.loras))
    return store.add(new) if running is None else store.finish(running.id, new)


def record_blocked(
    store: HistoryStore,
    request: GenerationRequest,
    reason: str,
    comparison_id: str | None = None,
    running: Generation | None = None,
) -> Generation:
    """A generation the content policy refused (krea2/content_filter.py): status `blocked`, the reason, never an image,
    nor the init image and mask it started from (removed from the data folder unless another row names them: History
    and exports would show them). The seed is kept when one was drawn (the flagged image's)."""
    fields = {**_request_fields(request), "status": "blocked", "error": reason, "comparison_id": comparison_id,
              "source_sha256": None, "mask_sha256": None}  # fmt: skip
    if running is not None:
        if fields["seed"] is None:
            fields.pop("seed")  # refused before a seed was drawn: keep what the start recorded
        row = store.finish(running.id, NewGeneration(fields))
    else:
        row = store.add(NewGeneration(fields))
    if (source := request.source) is not None:
        store.forget_sources({digest for digest in (source.image_sha256, source.mask_sha256) if digest})
    return row


def record_failure(
    store: HistoryStore,
    request: GenerationRequest,
    status: str,
    error: str,
    comparison_id: str | None = None,
    running: Generation | None = None,
) -> Generation:
    fields = {**_request_fields(request), "status": status, "error": error, "comparison_id": comparison_id}
    if running is not None:
        fields.pop("seed")  # a failure before the seed was drawn keeps what the start recorded (and its LoRAs)
        return store.finish(running.id, NewGeneration(fields))
    return store.add(NewGeneration(fields, loras=requested_loras(request)))
