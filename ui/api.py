"""Named API endpoints for gradio_client: `generate`, `compare`, `compare_loras`, `history`, `loras`.

They are events on hidden components rather than `gr.api` functions so that images come back as real PNG files
(metadata intact) that gradio_client downloads, not as server-side paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from krea2 import RAW, TURBO, GenerationRequest, InvalidRequest
from krea2.demo import default_size
from krea2.request import HistoryQuery
from studio.service import HISTORY_PAGE_SIZE, WITH_LORAS, WITHOUT_LORAS, DoneEvent, StepEvent, StudioService

from .handlers import DEFAULT_CHECKPOINT, REQUEST_DEFAULTS, Handlers, session_of, user_error
from .robust import added_later
from .uploads import uploaded_path

IDLE_S = 0.25  # longest a generation runs without handing control back to Gradio (to notice cancels, disconnects)
# The request's LoRA fields, as the API names them: one parameter, `loras`.
LORA_FIELDS = {"lora_name": "loras", "lora_weight": "loras", "lora_target": "loras"}


def _summary(event: DoneEvent) -> dict[str, Any]:
    result, generation = event.result, event.generation
    return {
        "generation_id": generation.id,
        "checkpoint": result.request.checkpoint,
        "seed": result.request.seed,
        "seeds": result.seeds,
        "steps": result.request.steps,
        "guidance": result.request.guidance,
        "width": result.request.width,
        "height": result.request.height,
        "timings_ms": result.timings.as_ms(),
        "warnings": result.warnings,
        "comparison_id": generation.comparison_id,
        "loras": [{"name": lora.name, "hash": lora.hash, "weight": lora.weight} for lora in result.loras],
        "mode": generation.mode,
        "strength": generation.strength,
    }


def aware(moment: datetime) -> datetime:
    """Times are stored in UTC, but SQLite hands them back without a zone; an API answer must say which zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _optional(value: Any) -> Any:
    """Empty text from an optional API field means "not given"."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def event_id() -> str | None:
    """The Gradio event this call serves (what `/cancel` names); Gradio sets it for the function it runs."""
    from gradio.context import LocalContext

    return LocalContext.event_id.get(None)


def image_start(image: Any, mask: Any, strength: Any, outpaint: Any, feather: Any, size: tuple[Any, Any]):
    """The `image`, `mask`, `strength`, `outpaint` ("left,right,top,bottom" pixels) and `feather` fields as the
    request's start, or None without an image. The size: `width` and `height`, or neither for the image's own."""
    from krea2.image_input import parse_feather, parse_outpaint
    from studio.sources import image_source, start_size

    path = uploaded_path(image)
    if path is None:
        if any(_optional(v) is not None for v in (mask, strength, outpaint)) or parse_feather(_optional(feather) or 0):
            raise InvalidRequest("image", None, "is needed by mask, strength, outpaint and feather")
        return None
    sides = parse_outpaint(outpaint) if _optional(outpaint) is not None else None
    mask_path = uploaded_path(mask, "mask")
    pixels = parse_feather(_optional(feather) or 0)
    wanted = start_size(*(_optional(v) for v in size))
    return image_source(  # a strength of 0 is the caller's (and refused), not "none given"
        path, strength=_optional(strength), mask=mask_path, feather=pixels, outpaint=sides, size=wanted
    )


def sent_size(width: Any, height: Any, default: tuple[int, int]) -> tuple[Any, Any]:
    """Text-to-image's size: what was sent, each side left empty taking the default's."""
    width, height = _optional(width), _optional(height)
    return (default[0] if width is None else width, default[1] if height is None else height)


def renamed(error: InvalidRequest, names: dict[str, str]) -> InvalidRequest:
    return InvalidRequest(names.get(error.field, error.field), error.value, error.problem)


def _refused(error: Exception) -> gr.Error:
    return user_error(error, html=False)  # API callers get the sentence as plain text, not markup


def register_api(service: StudioService) -> None:
    # preprocess=False: every value reaches GenerationRequest exactly as sent, so it alone decides what is valid (a
    # component would turn an object into its repr, round 4.5 to 4, or fail on "abc" without naming the field).
    # As many at once as there are workers (krea2/workers.py), in the UI's one queue.
    gpu = {"concurrency_id": "gpu", "concurrency_limit": service.concurrent_generations, "preprocess": False}
    default = default_size(service.demo)  # 256² with the demo checkpoints, as the page opens

    def run(stream, labels: Sequence[str], answer: Callable[[dict[str, Any]], Any]) -> Iterator[tuple[Any, Any]]:
        """Relay a generation stream; yields progress, then (images, answer(infos by label)) last, the images in the
        order of `labels` whatever order the runs finished in (side by side on several workers, Turbo ends first).

        A generator on purpose: Gradio resumes it after every step (and every IDLE_S without one), so a `/cancel` or
        a client that went away closes it between two steps, and closing it cancels the generation."""
        done: dict[str, tuple[list[tuple[str, str]], dict[str, Any]]] = {}
        try:
            for event in stream:
                if isinstance(event, DoneEvent):
                    info = _summary(event)
                    images = [(service.image_file(image), f"{info['checkpoint']} seed {image.seed}")
                              for image in event.generation.images]  # fmt: skip
                    done[event.label] = (images, info)
                elif isinstance(event, StepEvent):
                    yield gr.skip(), {"checkpoint": event.label, "step": event.step, "steps": event.total}
                else:
                    yield gr.skip(), gr.skip()
        except Exception as error:  # noqa: BLE001 - every failure reaches the caller as one sentence
            raise _refused(error) from None
        ordered = [label for label in labels if label in done] + [label for label in done if label not in labels]
        yield [image for label in ordered for image in done[label][0]], answer({k: done[k][1] for k in ordered})

    # The image fields default to None: gradio_client then treats them as optional (`added_later` for raw calls).
    def generate(prompt, checkpoint, negative_prompt, steps, guidance, width, height, seed, num_images, loras=None,
                 image=None, mask=None, strength=None, outpaint=None, feather=None,
                 request: gr.Request = None):  # fmt: skip
        try:
            start = image_start(image, mask, strength, outpaint, feather, (width, height))
            width, height = start.size if start is not None else sent_size(width, height, default)
            req = GenerationRequest(
                prompt=prompt, checkpoint=checkpoint, negative_prompt=negative_prompt, steps=_optional(steps),
                guidance=_optional(guidance), width=width, height=height, seed=_optional(seed), num_images=num_images,
                loras=loras,
                source=start.source if start else None,
            )  # fmt: skip
        except InvalidRequest as error:
            raise _refused(renamed(error, LORA_FIELDS)) from None
        except Exception as error:  # noqa: BLE001
            raise _refused(error) from None
        stream = service.generate(req, session_of(request), idle=IDLE_S, job=event_id())
        yield from run(stream, [req.checkpoint], lambda infos: infos[req.checkpoint])

    def compare(prompt, negative_prompt, seed, width, height, raw_steps, raw_guidance, turbo_steps, loras=None,
                image=None, mask=None, strength=None, outpaint=None, feather=None,
                request: gr.Request = None):  # fmt: skip
        """Raw and Turbo, each with the LoRAs (the release's workflow: LoRAs trained on Raw, run on Turbo)."""
        try:
            start = image_start(image, mask, strength, outpaint, feather, (width, height))
            width, height = start.size if start is not None else sent_size(width, height, default)
            raw = GenerationRequest(
                prompt=prompt, checkpoint=RAW.key, negative_prompt=negative_prompt, steps=_optional(raw_steps),
                guidance=_optional(raw_guidance), width=width, height=height, seed=_optional(seed), loras=loras,
                source=start.source if start else None,
            )  # fmt: skip
        except InvalidRequest as error:  # named as this endpoint names them
            names = {"steps": "raw_steps", "guidance": "raw_guidance", **LORA_FIELDS}
            raise _refused(renamed(error, names)) from None
        except Exception as error:  # noqa: BLE001
            raise _refused(error) from None
        try:
            turbo = raw.with_checkpoint(TURBO.key, steps=_optional(turbo_steps))
        except InvalidRequest as error:
            raise _refused(renamed(error, {"steps": "turbo_steps"})) from None
        stream = service.compare(raw, turbo, session_of(request), idle=IDLE_S, job=event_id())
        yield from run(stream, [RAW.key, TURBO.key], lambda infos: infos)

    def compare_loras(prompt, checkpoint, negative_prompt, steps, guidance, width, height, seed, loras,
                      image=None, mask=None, strength=None, outpaint=None, feather=None,
                      request: gr.Request = None):  # fmt: skip
        """One checkpoint without the LoRAs and with them, same seed (and the same init image, when one is sent):
        what the LoRAs do."""
        try:
            start = image_start(image, mask, strength, outpaint, feather, (width, height))
            width, height = start.size if start is not None else sent_size(width, height, default)
            req = GenerationRequest(
                prompt=prompt, checkpoint=checkpoint, negative_prompt=negative_prompt, steps=_optional(steps),
                guidance=_optional(guidance), width=width, height=height, seed=_optional(seed), loras=loras,
                source=start.source if start else None,
            )  # fmt: skip
            stream = service.compare_loras(req, session_of(request), idle=IDLE_S, job=event_id())
        except InvalidRequest as error:
            raise _refused(renamed(error, LORA_FIELDS)) from None
        except Exception as error:  # noqa: BLE001
            raise _refused(error) from None
        yield from run(stream, [WITHOUT_LORAS, WITH_LORAS], lambda infos: infos)

    def loras_list():
        """The LoRA folder: what `loras` may name; a file that cannot be read has no hash and says why."""
        try:
            listed = []
            for file in service.lora_files():
                digest, problem = service.lora_hash_or_problem(file)
                listed.append({"name": file.name, "hash": digest or None, "bytes": file.size,
                               **({"problem": problem} if problem else {})})  # fmt: skip
            return listed
        except Exception as error:  # noqa: BLE001
            raise _refused(error) from None

    def history(search, checkpoint, favorites_only, comparisons_only, cursor, limit, lora):
        try:
            query = HistoryQuery(search, checkpoint, favorites_only, comparisons_only, _optional(cursor), limit, lora)
            filters = Handlers.history_filter(query.search, query.checkpoint, query.favorites_only,
                                              query.comparisons_only, query.lora)  # fmt: skip
            page = service.page(filters, query.cursor, query.limit)
            total = service.count(filters)
        except Exception as error:  # noqa: BLE001
            raise _refused(error) from None
        items = [
            {
                "generation_id": g.id, "created_at": aware(g.created_at).isoformat(), "checkpoint": g.checkpoint,
                "status": g.status, "prompt": g.prompt, "negative_prompt": g.negative_prompt, "seed": g.seed,
                "steps": g.steps, "guidance": g.guidance, "width": g.width, "height": g.height,
                "favorite": g.favorite, "comparison_id": g.comparison_id, "error": g.error,
                "timings_ms": g.timings_ms(), "images": len(g.images),
                "loras": [{"name": x.name, "hash": x.hash, "weight": x.weight} for x in g.loras],
            }
            for g in page.items
        ]  # fmt: skip
        return {"items": items, "next_cursor": page.next_cursor, "total": total}

    with gr.Column(visible=False):
        prompt = gr.Textbox(label="prompt")
        checkpoint = gr.Textbox(label="checkpoint", value=DEFAULT_CHECKPOINT)
        negative = gr.Textbox(label="negative_prompt", value="")
        # Optional numbers are text: empty means "the checkpoint's default" (steps, guidance) or "random" (seed).
        steps = gr.Textbox(label="steps", value="")
        guidance = gr.Textbox(label="guidance", value="")
        # Empty: the default size, or with an init image that image's own size.
        width = gr.Textbox(label="width", value="")
        height = gr.Textbox(label="height", value="")
        seed = gr.Textbox(label="seed", value="")
        num_images = gr.Number(label="num_images", value=REQUEST_DEFAULTS["num_images"], precision=0)
        raw_steps = gr.Number(label="raw_steps", value=RAW.default_steps, precision=0)
        raw_guidance = gr.Number(label="raw_guidance", value=RAW.default_guidance)
        turbo_steps = gr.Number(label="turbo_steps", value=TURBO.default_steps, precision=0)
        image = gr.File(label="image")
        mask = gr.File(label="mask")
        strength = gr.Textbox(label="strength", value="")
        outpaint = gr.Textbox(label="outpaint", value="")
        feather = gr.Textbox(label="feather", value="")
        images = gr.Gallery(label="images", format="png")
        info = gr.JSON(label="info")
        search = gr.Textbox(label="search", value="")
        favorites_only = gr.Checkbox(label="favorites_only", value=False)
        comparisons_only = gr.Checkbox(label="comparisons_only", value=False)
        cursor = gr.Textbox(label="cursor", value="")
        limit = gr.Number(label="limit", value=HISTORY_PAGE_SIZE, precision=0)
        history_checkpoint = gr.Textbox(label="history_checkpoint", value="all")
        page = gr.JSON(label="page")
        # Added with LoRAs: callers written before them may leave these out (ui/robust.py).
        loras = added_later(gr.JSON(label="loras", value=[]))
        history_lora = added_later(gr.Textbox(label="lora", value=""))
        lora_list = gr.JSON(label="loras_list")
        trigger = gr.Button(visible=False)
    image_fields = [image, mask, strength, outpaint, feather]
    for field in image_fields:  # added for image inputs: calls written for the earlier fields still work
        added_later(field)

    trigger.click(
        generate,
        [prompt, checkpoint, negative, steps, guidance, width, height, seed, num_images, loras, *image_fields],
        [images, info], api_name="generate", **gpu,
    )  # fmt: skip
    trigger.click(
        compare, [prompt, negative, seed, width, height, raw_steps, raw_guidance, turbo_steps, loras, *image_fields],
        [images, info], api_name="compare", **gpu,
    )  # fmt: skip
    trigger.click(
        history, [search, history_checkpoint, favorites_only, comparisons_only, cursor, limit, history_lora], page,
        api_name="history", preprocess=False,
    )  # fmt: skip
    trigger.click(
        compare_loras, [prompt, checkpoint, negative, steps, guidance, width, height, seed, loras, *image_fields],
        [images, info], api_name="compare_loras", **gpu,
    )  # fmt: skip
    trigger.click(loras_list, None, lora_list, api_name="loras", preprocess=False)
