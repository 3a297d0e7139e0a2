"""Event handlers: translate between Gradio component values and StudioService calls.

Every handler turns engine/storage errors into a `gr.Error` with the message the user needs; unexpected exceptions
are logged and shown as one line. No traceback ever reaches the page.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import gradio as gr

from krea2 import CHECKPOINTS, Cancelled, GenerationRequest, Krea2Error, get_spec
from storage import HistoryFilter, StorageError
from storage.pnginfo import PngInfoError
from storage.recording import SETTINGS_FIELDS, settings_of

from .presets import CUSTOM, preset_choices, preset_size
from .service import HISTORY_PAGE_SIZE, DoneEvent, StepEvent, StudioService, describe
from .text import as_text

log = logging.getLogger(__name__)
USER_ERRORS = (Krea2Error, StorageError, PngInfoError)
CHECKPOINT_CHOICES = [("Turbo", "turbo"), ("Raw", "raw")]


def user_error(error: Exception, *, html: bool = True) -> gr.Error:
    """One sentence for the person. The page shows it as HTML (Gradio's toasts), so there it is escaped: an error
    quotes what was typed, and typed markup must stay text. API callers (`html=False`) get it as sent."""
    if isinstance(error, USER_ERRORS):
        message = str(error)
    else:
        log.error("Unexpected error in a handler", exc_info=error)
        message = f"Something went wrong ({type(error).__name__}). The server is still running; try again."
    return gr.Error(as_text(message) if html else message, print_exception=False)


def friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None

    return wrapper


def display_preview(preview, min_side: int = 256):
    """The latent preview is 1/8 of the image; scale it up (smoothly) so it is visible."""
    scale = max(1, -(-min_side // min(preview.size)))
    return preview.resize((preview.width * scale, preview.height * scale), resample=2)  # bilinear


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def default_settings() -> dict[str, dict[str, float]]:
    return {key: {"steps": s.default_steps, "guidance": s.default_guidance} for key, s in CHECKPOINTS.items()}


def steps_slider(checkpoint: str, value: float) -> dict:
    spec = get_spec(checkpoint)
    lo, hi = spec.steps_range
    return gr.update(value=value, minimum=lo, maximum=hi, label=f"Steps (recommended {spec.default_steps})")


def guidance_slider(checkpoint: str, value: float) -> dict:
    spec = get_spec(checkpoint)
    lo, hi = spec.guidance_range
    return gr.update(value=value, minimum=lo, maximum=hi, label=f"Guidance (recommended {spec.default_guidance})")


def build_request(prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, num_images):
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative or "",
        checkpoint=checkpoint,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
        seed=None if randomize or seed is None else seed,
        num_images=num_images,
    )


class Handlers:
    def __init__(self, service: StudioService) -> None:
        self.service = service

    # ------------------------------------------------------------------------------------------------ generate tab
    def switch_checkpoint(self, new: str, steps: float, guidance: float, current: str, settings: dict):
        """Each checkpoint keeps its own steps and guidance: save the old one's, restore the new one's."""
        settings = {**settings, current: {"steps": steps, "guidance": guidance}}
        mine = settings.get(new) or default_settings()[new]
        spec = get_spec(new)
        return (
            steps_slider(new, mine["steps"]),
            guidance_slider(new, mine["guidance"]),
            gr.update(visible=spec.uses_negative_prompt(mine["guidance"])),
            spec.description,
            gr.update(choices=preset_choices(new)),
            new,
            settings,
        )

    @staticmethod
    def negative_visibility(guidance: float):
        return gr.update(visible=bool(guidance and guidance > 0))

    @staticmethod
    def apply_preset(label: str):
        size = preset_size(label)
        if size is None:
            return gr.skip(), gr.skip()
        return size

    @staticmethod
    def to_custom():
        return CUSTOM

    def generate(self, prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, num_images,
                 items: list, request: gr.Request):  # fmt: skip
        """Streams: (preview, progress text, gallery, seed text, gallery state)."""
        try:
            req = build_request(prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize,
                                num_images)  # fmt: skip
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None
        started = time.monotonic()
        yield None, "Waiting for the GPU…", gr.skip(), gr.skip(), gr.skip()
        try:
            for event in self.service.generate(req, session_of(request)):
                elapsed = time.monotonic() - started
                if isinstance(event, StepEvent):
                    text = f"**Step {event.step}/{event.total}** · {elapsed:.1f} s"
                    yield display_preview(event.preview), text, gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, DoneEvent):
                    generation = event.generation
                    name = get_spec(generation.checkpoint).display_name
                    new = [
                        {"path": str(self.service.store.absolute(image.path)), "generation_id": generation.id,
                         "caption": f"#{generation.id} · {name} · seed {image.seed}"}
                        for image in generation.images
                    ]  # fmt: skip
                    items = new + list(items or [])
                    t = event.result.timings
                    warnings = "".join(f"\n\n⚠️ {w}" for w in event.result.warnings)
                    text = (f"**Done** in {t.total_s:.2f} s (encode {t.encode_s:.2f} · denoise {t.denoise_s:.2f} · "
                            f"decode {t.decode_s:.2f})")  # fmt: skip
                    seed_text = f"Seed used: **{event.result.request.seed}**" + warnings
                    yield gr.skip(), text, [(i["path"], i["caption"]) for i in items], seed_text, items
        except Krea2Error as error:
            if isinstance(error, Cancelled):
                yield (
                    gr.skip(),
                    f"**Cancelled** after {time.monotonic() - started:.1f} s",
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
                return
            raise user_error(error) from None
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None

    def cancel(self, request: gr.Request):
        cancelled = self.service.cancel(session_of(request))
        return "**Cancelling…**" if cancelled else gr.skip()

    @staticmethod
    def _selected(evt: gr.SelectData, count: int) -> int:
        """The index a select event names, when it names one of the `count` items shown."""
        index = evt.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise gr.Error("That image is no longer in the list; select another one.", print_exception=False)
        return index

    @friendly
    def select_result(self, items: list, evt: gr.SelectData):
        item = (items or [])[self._selected(evt, len(items or []))]
        generation = self.service.get(item["generation_id"])
        return describe(generation), gr.update(visible=True), generation.id

    @friendly
    def reuse(self, generation_id: int | None, settings: dict):
        """Fill the Generate tab with a history row's settings (and switch to it)."""
        if generation_id is None:
            raise gr.Error("Select an image first.")
        return self._fill_generate(settings_of(self.service.get(generation_id)), settings)

    def _fill_generate(self, values: dict[str, Any], settings: dict):
        checkpoint = values.get("checkpoint") if values.get("checkpoint") in CHECKPOINTS else "turbo"
        spec = get_spec(checkpoint)
        steps = values.get("steps") or spec.default_steps
        guidance = values.get("guidance") if values.get("guidance") is not None else spec.default_guidance
        seed = values.get("seed")
        return (
            values.get("prompt", ""),
            gr.update(value=values.get("negative_prompt") or "", visible=spec.uses_negative_prompt(guidance)),
            checkpoint,
            steps_slider(checkpoint, steps),
            guidance_slider(checkpoint, guidance),
            values.get("width") or 1024,
            values.get("height") or 1024,
            seed if seed is not None else 0,
            seed is None,
            gr.update(choices=preset_choices(checkpoint), value=CUSTOM),
            spec.description,
            checkpoint,
            {**settings, checkpoint: {"steps": steps, "guidance": guidance}},
            gr.Tabs(selected="generate"),
        )

    # ------------------------------------------------------------------------------------------------ compare tab
    def compare(self, prompt, negative, seed, randomize, width, height, raw_steps, raw_guidance, turbo_steps,
                request: gr.Request):  # fmt: skip
        """Streams: (progress text, raw image, turbo image, slider, info)."""
        try:
            raw = build_request(prompt, negative, "raw", raw_steps, raw_guidance, width, height, seed, randomize, 1)
            turbo = raw.with_checkpoint("turbo", steps=turbo_steps)
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None
        started = time.monotonic()
        paths: dict[str, str] = {}
        info: list[str] = []
        used_seed = raw.seed
        yield "Waiting for the GPU…", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            for event in self.service.compare(raw, turbo, session_of(request)):
                name = get_spec(event.label).display_name
                if isinstance(event, StepEvent):
                    text = f"**{name}** step {event.step}/{event.total} · {time.monotonic() - started:.1f} s"
                    yield text, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                else:
                    r = event.result.request
                    used_seed = r.seed
                    paths[event.label] = str(self.service.store.absolute(event.generation.images[0].path))
                    info.append(f"**{name}**: {r.steps} steps, guidance {r.guidance}, "
                                f"{event.result.timings.total_s:.2f} s")  # fmt: skip
                    image = paths[event.label]
                    yield (f"{name} done", image if event.label == "raw" else gr.skip(),
                           image if event.label == "turbo" else gr.skip(), gr.skip(), gr.skip())  # fmt: skip
            seed_text = f"Seed **{used_seed}** for both · prompt encoded once for both"
            yield ("**Done**", gr.skip(), gr.skip(), (paths["raw"], paths["turbo"]),
                   "  \n".join([*info, seed_text]))  # fmt: skip
        except Krea2Error as error:
            if isinstance(error, Cancelled):
                yield "**Cancelled**", gr.skip(), gr.skip(), gr.skip(), gr.skip()
                return
            raise user_error(error) from None
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None

    # ------------------------------------------------------------------------------------------------ history tab
    @staticmethod
    def history_filter(search: str, checkpoint: str, favorites: bool, comparisons: bool) -> HistoryFilter:
        return HistoryFilter(
            checkpoint=None if checkpoint in (None, "", "all") else checkpoint,
            favorites_only=bool(favorites),
            comparisons_only=bool(comparisons),
            text=(search or "")[:200],
        )

    @friendly
    def history(self, search, checkpoint, favorites, comparisons, nav: dict | None, direction: str = "first"):
        """Returns (gallery, count text, nav state, detail visibility)."""
        nav = dict(nav or {"stack": [None], "next": None})
        stack = list(nav.get("stack") or [None])
        if direction == "first":
            stack = [None]
        elif direction == "older" and nav.get("next") is not None:
            stack.append(nav["next"])
        elif direction == "newer" and len(stack) > 1:
            stack.pop()
        filters = self.history_filter(search, checkpoint, favorites, comparisons)
        page = self.service.page(filters, stack[-1])
        total = self.service.count(filters)
        items = []
        ids = []
        for generation in page.items:
            thumb = self.service.thumb_path(generation) or str(self.service.placeholder)
            label = f"#{generation.id} · {generation.checkpoint} · {generation.status}"
            if generation.favorite:
                label = "★ " + label
            items.append((thumb, f"{label} · {generation.prompt[:60]}"))
            ids.append(generation.id)
        first = (len(stack) - 1) * HISTORY_PAGE_SIZE
        shown = f"{first + 1}–{first + len(items)}" if items else "0"
        text = f"{shown} of {total} generations"
        return items, text, {"stack": stack, "next": page.next_cursor, "ids": ids}, gr.update(visible=False)

    @friendly
    def select_history(self, nav: dict, evt: gr.SelectData):
        ids = (nav or {}).get("ids") or []
        generation = self.service.get(ids[self._selected(evt, len(ids))])
        path = self.service.image_path(generation)
        star = "★ Unfavorite" if generation.favorite else "☆ Favorite"
        return (
            gr.update(visible=True),
            path,
            describe(generation),
            generation.id,
            star,
            gr.update(value=path, visible=path is not None),
            gr.update(visible=False),
        )

    @friendly
    def toggle_favorite(self, generation_id: int | None):
        if generation_id is None:
            raise gr.Error("Select a generation first.")
        favorite = self.service.toggle_favorite(generation_id)
        return "★ Unfavorite" if favorite else "☆ Favorite"

    @staticmethod
    def ask_delete():
        return gr.update(visible=True)

    @friendly
    def delete(self, generation_id: int | None):
        if generation_id is None:
            raise gr.Error("Select a generation first.")
        self.service.delete(generation_id)
        gr.Info(f"Deleted generation #{generation_id}.")
        return gr.update(visible=False), None, gr.update(visible=False)

    # ------------------------------------------------------------------------------------------------ PNG info
    @friendly
    def png_info(self, path: str | None):
        if not path:
            return "", None, None
        info = self.service.png_info(path)
        values = dict(info["parsed"])
        if info["request"]:
            values.update({k: v for k, v in info["request"].items() if k in SETTINGS_FIELDS})
        return info["parameters"] or "", info["request"] or info["parsed"], values

    @friendly
    def send_png_to_generate(self, values: dict | None, settings: dict):
        if not values:
            raise gr.Error("Drop a PNG with generation parameters first.")
        return self._fill_generate(values, settings)
