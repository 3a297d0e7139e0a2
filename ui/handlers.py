"""Event handlers: translate between Gradio component values and StudioService calls.

Every handler turns engine/storage errors into a `gr.Error` with the message the user needs; unexpected exceptions
are logged and shown as one line. No traceback ever reaches the page.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import gradio as gr

from krea2 import (
    CHECKPOINTS,
    RAW,
    TURBO,
    Cancelled,
    CheckpointSpec,
    GenerationRequest,
    InvalidRequest,
    Krea2Error,
    get_spec,
)
from krea2.demo import default_size
from krea2.errors import ContentBlocked, LoraError
from krea2.image_input import DEFAULT_STRENGTH
from krea2.request import MAX_LORAS, MAX_SEED, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, LoraChoice
from storage import HistoryFilter, StorageError
from storage.pnginfo import PngInfoError
from storage.store import RUNNING
from studio.recording import SETTINGS_FIELDS, loras_of, settings_of
from studio.service import HISTORY_PAGE_SIZE, WITH_LORAS, WITHOUT_LORAS, DoneEvent, StepEvent, StudioService
from studio.sources import hires_source, image_source, reused_source

from .details import describe, loras_text
from .image_inputs import (
    STRENGTH_RANGE,
    Placing,
    describe_start,
    editor_mask,
    editor_source,
    editor_value,
    feather_after_upload,
    holds_picture,
    reused_mask_view,
    stale_echo,
)
from .loras import ROW_VALUES, LoraHandlers, lora_choices, recorded_prompt_and_loras
from .presets import checkpoint_note, preset_choices, preset_for, preset_size
from .served import remove_served_copies, served_copies
from .text import as_text, shown

log = logging.getLogger(__name__)
SOURCE_FIELDS = ("strength", "source_sha256", "mask_sha256")  # what a PNG says about the image it started from
# The Generate handler's trailing values: the LoRA picker's rows, then the image inputs (editor, strength, feather,
# outpaint left/right/top/bottom, the mask a reuse brought back); left out, they take these.
LORA_VALUES = MAX_LORAS * ROW_VALUES
IMAGE_DEFAULTS = (None, DEFAULT_STRENGTH, 0, 0, 0, 0, 0, None)
# The buttons that start one of Generate's runs (ui/layout.py's `run_buttons`, Generate first): held together while one
# runs, so one click is one run.
RUN_BUTTONS = 5
USER_ERRORS = (Krea2Error, StorageError, PngInfoError)
# What a form shows before anyone touches it: GenerationRequest's own defaults (checkpoint, size, image count).
REQUEST_DEFAULTS = {f.name: f.default for f in fields(GenerationRequest) if f.default is not MISSING}
DEFAULT_CHECKPOINT = REQUEST_DEFAULTS["checkpoint"]
COMPARE_CHECKPOINTS, COMPARE_LORAS = "checkpoints", "loras"  # Compare: Raw against Turbo, or without/with LoRAs


def short_name(spec: CheckpointSpec) -> str:
    """The name every control shows for a checkpoint: its full name, "Krea 2 Turbo" (the Krea 2 Community License,
    3.1 b, wants model names to begin with "Krea")."""
    return spec.display_name


# The default checkpoint first, then the others.
CHECKPOINT_CHOICES = [(short_name(spec), key) for key, spec in
                      sorted(CHECKPOINTS.items(), key=lambda item: item[0] != DEFAULT_CHECKPOINT)]  # fmt: skip


def user_error(error: Exception, *, html: bool = True) -> gr.Error:
    """One sentence for the person. The page shows it as HTML (Gradio's toasts), so there it is escaped: an error
    quotes what was typed, and typed markup must stay text. API callers (`html=False`) get it as sent."""
    if not html:
        return gr.Error(str(error) if isinstance(error, USER_ERRORS) else for_people(error), print_exception=False)
    return gr.Error(as_text(for_people(error)), print_exception=False)


# How the page names each request field (the API keeps the field names, which its callers send).
FIELD_NAMES = {
    "prompt": "the prompt",
    "negative_prompt": "the negative prompt",
    "checkpoint": "the checkpoint",
    "steps": "steps",
    "guidance": "guidance",
    "width": "the width",
    "height": "the height",
    "seed": "the seed",
    "num_images": "the number of images",
    "loras": "the LoRAs",
    "lora_name": "a LoRA's name",
    "lora_weight": "a LoRA's weight",
    "lora_target": "the checkpoints a LoRA applies to",
}


def for_people(error: Exception) -> str:
    """The sentence a person reads: "prompt: must not be empty (got '')" is for developers. Typed text is never
    quoted back (a number is), so the sentence is safe anywhere on the page."""
    if isinstance(error, InvalidRequest):
        if error.field == "prompt" and error.problem == "must not be empty":
            return "Type a prompt first: describe the image you want."
        name = FIELD_NAMES.get(error.field, error.field.replace("_", " "))
        value = error.value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and (isinstance(value, int) or (value.is_integer() and abs(value) < 2**53)):
            shown = f" (it is {int(value)})"  # a seed of 12345678901 read "(it is 1.23457e+10)"
        else:
            shown = f" (it is {value:g})" if number else ""
        return f"{name[:1].upper()}{name[1:]} {error.problem}{shown}."
    if isinstance(error, USER_ERRORS):
        return str(error)
    if isinstance(error, gr.Error):  # a handler's own sentence
        return str(error.message)
    log.error("Unexpected error in a handler", exc_info=error)
    return f"Something went wrong ({type(error).__name__}). The server is still running; try again."


def error_note(error: Exception) -> str:
    """An error shown once, where the progress of the run would be (no toast, no red badges on the outputs).
    Escaped for HTML and for Markdown: an engine or storage message may quote a path or a value."""
    return "⚠️ " + shown(for_people(error))


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


def shown_json(value: Any) -> Any:
    """`value` for a gr.JSON: a whole number past JavaScript's exact range (2^53) as text. A PNG's text can say
    anything ("Seed: 99999999999999999999"), and Gradio's JSON encoder refused an integer past 64 bits: the box showed a
    red "Error" badge and nothing else."""
    if isinstance(value, dict):
        return {key: shown_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shown_json(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)
    return value


def display_preview(preview, min_side: int = 256):
    """The latent preview is 1/8 of the image; scale it up (smoothly) so it is visible."""
    scale = max(1, -(-min_side // min(preview.size)))
    return preview.resize((preview.width * scale, preview.height * scale), resample=2)  # bilinear


def finite_number(value: Any) -> bool:
    """An int or a finite float, however large (a PNG from another tool may say a width of 1e308)."""
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


def plain_number(value: Any) -> bool:
    """A finite int or float a control can take (not a bool, NaN or a 400-digit integer from a foreign PNG)."""
    return finite_number(value) and abs(value) <= 2**53


def number_text(value: int | float) -> str:
    """A number as a note shows it: 1e+308 as that, a 400-digit integer by its length (it has no float)."""
    digits = len(str(abs(value))) if isinstance(value, int) else 0
    return f"a {digits}-digit number" if digits > 15 else f"{value:g}"


def say_mask_not_drawn() -> None:
    """Gradio 6.31's editor does not draw a painted layer set from the app, and a stroke replaces it with the new
    strokes (a review: baking the paint into the picture instead changed the picture on the first stroke). The mask
    is shown tinted under the editor (`reused_mask_view`); the panel may be below the fold, so a toast points there."""
    gr.Info("The picture came back with its inpaint mask, shown tinted under the editor (which does not draw it).")


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def compare_session(request: gr.Request | None) -> str:
    """The Compare tab's runs under a name of their own, so each tab's Cancel stops its own run: with several workers
    (krea2/workers.py) one page can run a Generate and a Compare at the same time."""
    return session_of(request) + "/compare"


def default_settings() -> dict[str, dict[str, float]]:
    return {key: {"steps": s.default_steps, "guidance": s.default_guidance} for key, s in CHECKPOINTS.items()}


def steps_label(spec: CheckpointSpec, prefix: str = "") -> str:
    return f"{prefix}{'s' if prefix else 'S'}teps (recommended {spec.default_steps})"


def guidance_label(spec: CheckpointSpec, prefix: str = "") -> str:
    return f"{prefix}{'g' if prefix else 'G'}uidance (recommended {spec.default_guidance})"


def steps_slider(checkpoint: str, value: float) -> dict:
    spec = get_spec(checkpoint)
    lo, hi = spec.steps_range
    return gr.update(value=value, minimum=lo, maximum=hi, label=steps_label(spec))


def guidance_slider(checkpoint: str, value: float) -> dict:
    spec = get_spec(checkpoint)
    lo, hi = spec.guidance_range
    return gr.update(value=value, minimum=lo, maximum=hi, label=guidance_label(spec))


def build_request(prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, num_images, loras=()):
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
        loras=loras,
    )


def started_from(req: GenerationRequest, init: Any, strength: Any) -> tuple[GenerationRequest, tuple[str, ...]]:
    """`req` starting from Compare's init image, at that image's size (as it is without one): every Compare mode runs
    its requests from the same start. With the notes on what was done to the image, as Generate says them."""
    if init is None:
        return req, ()
    start = image_source(init, strength=strength)
    notes = (*start.notes, f"generated at {start.size[0]}×{start.size[1]}")
    return replace(req, width=start.size[0], height=start.size[1], source=start.source), notes


def image_input_line(notes: tuple[str, ...]) -> str:
    """The progress line's sentence on what was done to an init image ("" without one)."""
    return "  \n" + as_text("Image input: " + "; ".join(notes) + ".") if notes else ""


def seeds_text(seeds: list[int]) -> str:
    """Every seed of a batch (image k used seed + k), not only the first."""
    if len(seeds) == 1:
        return f"Seed used: **{seeds[0]}**"
    return "Seeds used: " + ", ".join(f"**{seed}**" for seed in seeds)


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class StepClock:
    """Remaining time from the measured step rate. Timed from the first step a run reports (not from the click):
    waiting for the GPU and encoding the prompt happen once, and would make every step look slower."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None  # (step, elapsed) when the current run's first step came

    def remaining(self, step: int, total: int, elapsed: float) -> float | None:
        if self.first is None or step <= self.first[0]:  # a new run (Compare runs two): start measuring again
            self.first = (step, elapsed)
            return None
        first_step, first_elapsed = self.first
        per_step = (elapsed - first_elapsed) / (step - first_step)
        return per_step * (total - step)

    def progress(self, step: int, total: int, elapsed: float) -> str:
        left = self.remaining(step, total, elapsed)
        text = f"**Step {step}/{total}** · {elapsed:.1f} s"
        if step >= total:
            return text + " · decoding…"
        return text + (f" · about {duration(left)} left" if left is not None else " · estimating time left…")


def counted(progress: gr.Progress, what: str) -> Callable[[int, int], None]:
    """A history transfer's (done, total) as Gradio's progress bar."""
    return lambda done, total: progress((done, total), desc=what, unit="generations")


def next_seed(seed: int, count: int) -> int:
    """The seed after a batch of `count` images that started at `seed` (wrapping inside the seed range)."""
    return (seed + count) % (MAX_SEED + 1)


def nothing_to_place(placed: Placing | None) -> tuple[Any, ...]:
    """`reuse_source`'s and `png_source`'s answer without a start picture: the settings left as the reuse set them,
    no reused mask, an empty editor, and a placing of nothing left pending for `place_source` (which says the note)."""
    return *[gr.skip()] * 7, None, Placing.after(placed, None, pending=True), None


class Handlers:
    def __init__(self, service: StudioService) -> None:
        self.service = service
        self.default_size = default_size(service.demo)  # the size the Generate and Compare tabs open with
        self.loras = LoraHandlers(service, for_people)

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
            checkpoint_note(new, self.service.demo),
            gr.update(choices=preset_choices(new, self.service.demo)),
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

    def match_preset(self, width: Any, height: Any, checkpoint: Any):
        """The Size list's entry for the sides typed. The event passes its values unchecked (`preprocess=False`): a
        side typed past the slider's range (5000, 0) is one the page brings back into it on blur, while Gradio's own
        check would refuse it and leave a bare "Error" badge on Size. Here it is clamped as the page clamps it (not
        rounded to 16: the page does not, and Generate refuses 1032 by name)."""

        def side(value: Any) -> float | None:
            return min(max(value, MIN_SIDE), MAX_SIDE) if plain_number(value) else None

        key = checkpoint if isinstance(checkpoint, str) else ""  # unchecked too: any JSON a client sends
        return preset_for(side(width), side(height), key, self.service.demo)

    @staticmethod
    def describe_start(init, strength, feather, left=0, right=0, top=0, bottom=0, reused=None) -> str:
        """The note under the image editor: what Generate will do with its picture (`reused`: the mask a reuse brought
        back, `reused_mask_view`)."""
        try:
            return as_text(describe_start(init, strength, feather, (left, right, top, bottom), reused))
        except Exception as error:  # noqa: BLE001
            return error_note(error)

    @staticmethod
    def settings_changed(
        init: Any,
        strength: Any,
        feather: Any,
        left: Any,
        right: Any,
        top: Any,
        bottom: Any,
        reused: Any,
        placed: Placing | None,
    ) -> tuple[str, Placing, int]:
        """The strength, feather or an outpaint side moved: (the note, the placing with its mark moved on, that mark
        for the page). The editor's events carry the other controls' values from when they were sent, and they
        reached the server after this one (each uploads the picture first): answered, they put the old strength back
        into the note (tests/test_browser.py, 2 failures in 3 full runs). Moving the mark here leaves them
        unanswered (`stale_echo`), as after a picture the app put in; a reuse's pending picture stays pending."""
        note = Handlers.describe_start(init, strength, feather, left, right, top, bottom, reused)
        moved = Placing(None, 1) if placed is None else Placing(placed.value, placed.mark + 1, placed.pending)
        return note, moved, moved.mark

    @staticmethod
    def start_note(
        init: Any, strength: Any, feather: Any, left: Any, right: Any, top: Any, bottom: Any, reused: Any
    ) -> tuple[str, Any, Any]:
        """For an editor value: the note under the editor, and the box and picture of the mask a reuse brought back
        (`reused_mask_view`)."""
        note = Handlers.describe_start(init, strength, feather, left, right, top, bottom, reused)
        return note, *reused_mask_view(init, reused)

    @staticmethod
    def editor_changed(
        init: Any,
        strength: Any,
        feather: Any,
        left: Any,
        right: Any,
        top: Any,
        bottom: Any,
        reused: Any,
        mark: Any,
        placed: Placing | None,
    ) -> tuple[Any, Any, Any]:
        """The editor's new value: the note under it and the reused mask's box and preview (`start_note`), left as
        they are for an event sent before the last picture the app put in was in (`stale_echo`). One event for
        both: each event that takes the editor uploads its picture and layers again, and a second listener
        doubled the uploads after a reuse (measured on a 256² reuse before the reuse said the note itself: 222
        upload requests instead of 114; 123 now, in the 8 s after the click). The editor's upload event fills them
        too (`editor_uploaded` says why)."""
        if stale_echo(mark, placed):
            return gr.skip(), gr.skip(), gr.skip()
        return Handlers.start_note(init, strength, feather, left, right, top, bottom, reused)

    @staticmethod
    def editor_uploaded(
        init: Any,
        strength: Any,
        feather: Any,
        left: Any,
        right: Any,
        top: Any,
        bottom: Any,
        reused: Any,
        mark: Any,
        placed: Placing | None,
    ) -> tuple[Any, Any, Any, Any]:
        """A picture landed in the editor (uploaded, pasted, or put there by Send to img2img, Reuse settings or PNG
        info's Send to Generate): (feather, note, reused-mask box, its preview). The editor's change event does not
        always carry the picture then (Gradio 6.31, measured in Chromium): after an upload, either the change or
        this event is sent before the picture is in, with an empty value, and the other one holds it; after a send
        or a reuse the change came first, empty, and none followed. So this event, which takes the editor already
        (the feather), says what Generate will do as well, and no listener is added (each one that takes the editor
        uploads its picture again). An upload without a picture is that early one, not an empty editor: the note and
        the preview are left to the change event. An event sent before the last picture the app put in was in
        (`stale_echo`) changes nothing, the feather included (its reset feathered a reused mask twice)."""
        if stale_echo(mark, placed):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        new_feather = feather_after_upload(init)
        keep = gr.skip() if new_feather is None else new_feather
        if not holds_picture(init):
            return keep, gr.skip(), gr.skip(), gr.skip()
        used = feather if new_feather is None else new_feather  # the note as the slider will read
        return keep, *Handlers.start_note(init, strength, used, left, right, top, bottom, reused)

    def status_tick(self, on_page: str) -> tuple[Any, Any, Any]:
        """(status line, what the page shows, the timer): the line when it changed since the page last got it, and the
        timer running only while something loads or warms up; after that the line is read again when a run ends
        (what changes then comes from use: a swap plan's transformer, a pool's busy workers). An answer to any event
        makes Gradio's image editor upload its picture again (its three layers): a tick every 2 s sent megabytes
        while a picture was there."""
        status = self.service.status()
        line = status.summary()
        return (gr.skip() if line == on_page else line), line, gr.Timer(active=not status.settled)

    def files_of(self, generations: list[Any]) -> list[str]:
        """The PNGs, thumbnails, init images and masks of these generations (what a page may have been served; a copy
        of an init image another row still names is served again when asked for)."""
        store = self.service.store
        pictures = [path for g in generations for image in g.images for path in
                    (self.service.image_file(image), str(store.absolute(image.thumb_path)))]  # fmt: skip
        sources = [str(store.source_path(digest)) for g in generations
                   for digest in (g.source_sha256, g.mask_sha256) if digest]  # fmt: skip
        return pictures + sources

    @staticmethod
    def busy(label: str = "Generating…"):
        """A run button (Generate's by default) while a run of this page is in flight: one click, one run."""
        return gr.update(interactive=False, value=label)

    def queued(self, in_flight: bool, request: gr.Request = None) -> tuple[Any, ...]:
        """The page's `in_flight` flag set and every button that starts one of Generate's runs held while one is in
        flight (`RUN_BUTTONS`: Generate, which says so, then the others: a second click queued a second run behind the
        first), and the run marked as asked for: a Cancel while it waits in the queue stops it before it starts
        (StudioService.expect). With a run already in flight (Enter in the prompt box, which no held button stops),
        nothing more starts: a silent error ends the event chain, and the run in flight shows its own progress."""
        if in_flight:
            raise gr.Error("A run of this page is already in flight.", visible=False, print_exception=False)
        self.service.expect(session_of(request))
        return True, self.busy(), *[gr.update(interactive=False)] * (RUN_BUTTONS - 1)

    def compare_queued(self, request: gr.Request = None) -> dict:
        self.service.expect(compare_session(request))
        return self.busy("Comparing…")

    @staticmethod
    def idle() -> tuple[Any, ...]:
        """The `in_flight` flag cleared and `RUN_BUTTONS` back, once Generate's run is over."""
        return False, gr.update(interactive=True, value="Generate"), *[gr.update(interactive=True)] * (RUN_BUTTONS - 1)

    @staticmethod
    def compare_idle() -> dict:
        return gr.update(interactive=True, value="Compare")

    def generate(self, prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize, num_images,
                 items: list, request: gr.Request = None, *rows):  # fmt: skip
        """Streams: (preview, progress text, gallery, seed text, gallery state). A failure is one line in the progress
        area, never a toast as well, nor red badges on the outputs. `rows`: the LoRA picker's values, then the image
        inputs (editor, strength, feather, outpaint left/right/top/bottom, reused mask): with a picture in the image
        editor, the generation starts from it (at its own size; painted strokes make an inpaint mask)."""
        lora_rows, image = rows[:LORA_VALUES], (*rows[LORA_VALUES:], *IMAGE_DEFAULTS[len(rows[LORA_VALUES:]) :])
        init, strength, feather, *sides, reused = image
        notes: tuple[str, ...] = ()
        if self.service.started(session_of(request)):  # cancelled while it waited in the queue
            yield gr.skip(), "**Cancelled** before it started", gr.skip(), gr.skip(), gr.skip()
            return
        try:
            req = build_request(prompt, negative, checkpoint, steps, guidance, width, height, seed, randomize,
                                num_images, lora_choices(lora_rows))  # fmt: skip
            start = editor_source(init, strength, feather, tuple(sides), reused)
            if start is not None:
                notes = (*start.notes, f"generated at {start.size[0]}×{start.size[1]}")
                req = replace(req, width=start.size[0], height=start.size[1], source=start.source)
        except Exception as error:  # noqa: BLE001
            yield gr.skip(), error_note(error), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._run(req, items, request, notes)

    def _run(self, req: GenerationRequest, items: list, request: gr.Request | None, notes: tuple[str, ...] = ()):
        """`generate`'s stream for a built request (also the hi-res pass's)."""
        started = time.monotonic()
        clock = StepClock()
        yield None, "Starting…", gr.skip(), gr.skip(), gr.skip()
        try:
            for event in self.service.generate(req, session_of(request)):
                if isinstance(event, StepEvent):
                    text = clock.progress(event.step, event.total, time.monotonic() - started)
                    yield display_preview(event.preview), text, gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, DoneEvent):
                    generation = event.generation
                    new = [
                        {"path": self.service.image_file(image), "generation_id": generation.id,
                         "position": image.position, "caption": f"{short_name(req.spec)} · seed {image.seed}"}
                        for image in generation.images
                    ]  # fmt: skip
                    # Results deleted from History since (their files gone) leave the gallery: Gradio refused to
                    # serve a missing file with a message naming its path on the server.
                    items = new + [i for i in items or [] if isinstance(i, dict) and Path(str(i.get("path"))).is_file()]
                    t = event.result.timings
                    warnings = "".join(f"\n\n⚠️ {w}" for w in event.result.warnings)
                    text = (f"**Done** in {t.total_s:.2f} s (encode {t.encode_s:.2f} · denoise {t.denoise_s:.2f} · "
                            f"decode {t.decode_s:.2f})")  # fmt: skip
                    text += image_input_line(notes)
                    # The preview's last latent looks nothing like the image: the result takes its place.
                    final = new[0]["path"] if new else None
                    used = loras_text(event.result.loras)
                    seed_text = seeds_text(event.result.seeds) + (f" · LoRAs {shown(used)}" if used else "") + warnings
                    yield final, text, [(i["path"], i["caption"]) for i in items], seed_text, items
        except Cancelled:
            yield gr.skip(), f"**Cancelled** after {time.monotonic() - started:.1f} s", gr.skip(), gr.skip(), gr.skip()
        except ContentBlocked as error:  # the last (mosaic) preview goes too: the run left nothing to look at
            yield None, error_note(error), gr.skip(), gr.skip(), gr.skip()
        except Exception as error:  # noqa: BLE001
            yield gr.skip(), error_note(error), gr.skip(), gr.skip(), gr.skip()

    def upscale(self, selected: Any, factor: float, items: list, request: gr.Request = None):
        """The hi-res pass on a result or history image: upscaled by `factor`, then img2img at low strength with its
        own settings, seed and LoRAs. Streams like `generate`."""
        if self.service.started(session_of(request)):
            yield gr.skip(), "**Cancelled** before it started", gr.skip(), gr.skip(), gr.skip()
            return
        try:
            path = self._image_file(selected, "to upscale")
            start = hires_source(path, float(factor))
            values = self._settings_of(selected)
            loras, lora_notes = self._carried_loras(values["loras"])
            req = GenerationRequest(
                prompt=values["prompt"], negative_prompt=values["negative_prompt"], checkpoint=values["checkpoint"],
                steps=values["steps"], guidance=values["guidance"], width=start.size[0], height=start.size[1],
                seed=values["seed"], loras=loras, source=start.source,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001
            yield gr.skip(), error_note(error), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._run(req, items, request, (*start.notes, *lora_notes))

    def _carried_loras(self, recorded: list[dict[str, Any]]) -> tuple[list[LoraChoice], list[str]]:
        """The LoRAs an image was made with, as the hi-res pass takes them over (found as Reuse settings finds them,
        a renamed file by its hash, said in a note). A missing one refuses the pass: redrawn without it, the bigger
        image would no longer be the one upscaled."""
        choices, notes = self.service.restore_loras(recorded)
        if len(choices) < len(recorded):
            raise LoraError(" ".join([*notes, "The hi-res pass redraws an image with the LoRAs it was made with."]))
        return choices, [note[:1].lower() + note[1:].removesuffix(".") for note in notes]  # after "Image input: …;"

    def upscaler(self, factor: float):
        """`upscale` by a fixed factor, as an event handler (one per button)."""

        def run(selected: Any, items: list, request: gr.Request = None):
            yield from self.upscale(selected, factor, items, request)

        return run

    @friendly
    def send_to_image(
        self,
        selected: Any,
        strength: Any,
        feather: Any,
        left: Any,
        right: Any,
        top: Any,
        bottom: Any,
        reused: Any,
        placed: Placing | None,
    ):
        """A result or history image into the Generate tab's image editor: (editor, the note under it, the reused
        mask's box and preview, what was placed (`Placing`) and its mark for the page (see `stale_echo`), image
        panel, tabs). The note is said here, from the picture sent: into an editor that held a picture, the editor
        sent no event at all for it (Gradio 6.31, measured in Chromium), and the note kept describing the picture
        before."""
        editor = editor_value(self._image_file(selected, "to send"))
        note = Handlers.start_note(editor, strength, feather, left, right, top, bottom, reused)
        placing = Placing.after(placed, None)
        return editor, *note, placing, placing.mark, gr.Accordion(open=True), gr.Tabs(selected="generate")

    def _image_file(self, selected: Any, purpose: str) -> str:
        """The PNG of a selected result or history image, or a sentence: a failed or cancelled run has none, and a
        file removed outside the app is gone (both read "Something went wrong" before)."""
        generation, position = self._selection(selected)
        path = self.service.image_path(generation, position)
        if path is None:
            raise StorageError(f"Generation #{generation.id} has no image {purpose} (it is {generation.status}).")
        if not Path(path).is_file():
            raise StorageError(f"Generation #{generation.id}'s image file is gone from the data folder (removed "
                               "outside the app?).")  # fmt: skip
        return path

    @friendly
    def reuse_source(self, selected: Any, placed: Placing | None):
        """After "reuse settings", the first of two steps that bring back the image the generation started from, with
        its mask and strength (`place_source` is the second): (strength, image panel, feather, outpaint
        left/right/top/bottom, reused mask, what to place (`Placing`), the editor emptied). A text-to-image
        generation leaves an empty editor. The feather and outpaint go to 0: the stored picture is already the
        outpainted canvas and its mask already feathered, and they were applied a second time (a canvas extended
        twice, a mask blurred wider at each reuse). The reused mask is the editor's layer as sent, which the editor
        does not draw: `reused_mask_view` shows it while the editor still holds it.

        The editor is emptied before the picture goes in: Gradio 6.31's editor does not draw a layer the app sets,
        except after the user had painted in it (measured in Chromium: it then drew the reused mask, a stroke added
        to it, and the preview said otherwise); emptied first, it never draws it, and a stroke always replaces it, as
        the preview and the toast say. The settings come with the emptying, before the editor: with a separate
        emptying before them, the events the editor sent as it emptied carried the strength from before the reuse
        (measured in Chromium: the note said 0.30 under a slider at 0.55); those events are now left unanswered
        (`stale_echo`), and this keeps any that slip through from undoing the settings."""
        generation, _ = self._selection(selected)
        source = reused_source(self.service.store, generation)
        if source is None:
            return nothing_to_place(placed)
        if source.mask is not None:
            say_mask_not_drawn()
        editor = editor_value(source.image, source.mask)
        return (source.strength, gr.Accordion(open=True), 0, 0, 0, 0, 0, editor_mask(editor),
                Placing.after(placed, editor, pending=True), None)  # fmt: skip

    @staticmethod
    def place_source(
        placed: Placing | None, strength: Any, feather: Any, left: Any, right: Any, top: Any, bottom: Any, reused: Any
    ) -> tuple[Any, Any, Any, Any, Placing | None, Any]:
        """The second step of "reuse settings" and PNG info's "Send to Generate" (`reuse_source`, `png_source`): the
        picture into the emptied editor, with the note under it and the reused mask's preview said here, from what
        was placed: (editor, note, box, preview, what was placed with its value let go, its mark for the page (see
        `stale_echo`)). Into an editor that held a picture, the editor often sent no event for the new one (Gradio
        6.31, measured in Chromium), and the note kept describing the picture before."""
        if placed is None or not placed.pending:  # placed already, or replaced by a later placing (`Placing.pending`)
            return (gr.skip(),) * 6
        value = placed.value
        note = Handlers.start_note(value, strength, feather, left, right, top, bottom, reused)
        return (gr.skip() if value is None else value), *note, Placing(None, placed.mark), placed.mark

    def cancel(self, request: gr.Request):
        cancelled = self.service.cancel(session_of(request))
        return "**Cancelling…**" if cancelled else gr.skip()

    def cancel_compare(self, request: gr.Request):
        cancelled = self.service.cancel(compare_session(request))
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
        """Returns (details, reuse button, vary button, selection)."""
        item = (items or [])[self._selected(evt, len(items or []))]
        try:
            generation = self.service.get(item["generation_id"])
        except StorageError as error:  # deleted in History since: said in the details, not as a toast and badge
            hidden = gr.update(visible=False)
            return as_text(str(error)), hidden, hidden, None
        position = item.get("position", 0) if isinstance(item.get("position", 0), int) else 0
        shown = gr.update(visible=True)
        return describe(generation, position), shown, shown, [generation.id, position]

    @staticmethod
    def result_actions(selected: Any) -> list[dict]:
        """Send to img2img and the two Upscales, shown once a result that still exists is selected."""
        return [gr.update(visible=selected is not None)] * 3

    def _selection(self, selected: Any) -> tuple[Any, int]:
        """(generation, image position) of a selection: [id, position] (or a bare id, position 0)."""
        if isinstance(selected, (list, tuple)) and len(selected) == 2:
            generation_id, position = selected
        else:
            generation_id, position = selected, 0
        if generation_id is None or isinstance(generation_id, bool) or not isinstance(generation_id, int):
            raise gr.Error("Select an image first.", print_exception=False)
        position = position if isinstance(position, int) and not isinstance(position, bool) else 0
        return self.service.get(generation_id), position

    def _settings_of(self, selected: Any) -> dict[str, Any]:
        """The settings of the selected image: its own seed, not its batch's first."""
        generation, position = self._selection(selected)
        values = {**settings_of(generation), "loras": loras_of(generation)}
        seeds = [image.seed for image in generation.images]
        if 0 <= position < len(seeds) and seeds[position] is not None:
            values["seed"] = seeds[position]
        return values

    @friendly
    def reuse(self, selected: Any, settings: dict):
        """Fill the Generate tab with a history row's settings (and switch to it)."""
        return self._fill_generate(self._settings_of(selected), settings)

    @friendly
    def vary(self, selected: Any, settings: dict):
        """The same settings with the seeds after the selected image's batch, ready to run (the caller chains
        `generate`): a fresh take on an image that is nearly right."""
        generation, _ = self._selection(selected)
        values = {**settings_of(generation), "loras": loras_of(generation)}
        if values.get("seed") is None:
            raise gr.Error("This generation has no seed to vary; reuse its settings instead.", print_exception=False)
        values["seed"] = next_seed(values["seed"], max(1, len(generation.images) or generation.num_images or 1))
        return self._fill_generate(values, settings)

    def _fill_generate(self, values: dict[str, Any], settings: dict):
        """Generate's controls from recorded settings (a history item, a result, a PNG's metadata). A PNG may come from
        another tool: a value outside what a control takes is brought into range (a slider or number box left out
        of range refuses the next run) and said so under the checkpoint; one that is not a number is left out."""
        named = values.get("checkpoint")
        # isinstance first: `in` with a list (a PNG's JSON may hold one) raised TypeError.
        checkpoint = named if isinstance(named, str) and named in CHECKPOINTS else DEFAULT_CHECKPOINT
        spec = get_spec(checkpoint)
        notes: list[str] = []
        if named is not None and checkpoint != named:
            notes.append(f"Checkpoint {str(named)[:40]!r} is not one of this app's: {spec.display_name} is used.")

        def fitted(name: str, default: float, lo: float, hi: float, multiple: float = 0) -> float:
            value = values.get(name)
            if not finite_number(value):
                if value is not None:
                    notes.append(f"{name.capitalize()} {str(value)[:40]!r} is not a number: left at {default:g}.")
                return default
            clamped = min(max(value, lo), hi)  # first: a 400-digit integer has no float to round through
            fit = min(max(round(clamped / multiple) * multiple if multiple else clamped, lo), hi)
            if fit != value:
                step = f" in steps of {multiple:g}" if multiple else ""
                notes.append(f"{name.capitalize()} {number_text(value)} is not one {spec.display_name} takes ({lo:g} "
                             f"to {hi:g}{step}): set to {fit:g}.")  # fmt: skip
            return fit

        steps = int(fitted("steps", spec.default_steps, *spec.steps_range, multiple=1))
        guidance = fitted("guidance", spec.default_guidance, *spec.guidance_range)
        width = int(fitted("width", self.default_size[0], MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE))
        height = int(fitted("height", self.default_size[1], MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE))
        seed = values.get("seed")
        if plain_number(seed) and seed == int(seed) and 0 <= seed <= MAX_SEED:
            seed = int(seed)  # 5.0 from a JSON writer is seed 5
        elif seed is not None:
            notes.append(f"Seed {str(seed)[:40]} is not one this app draws with (0 to {MAX_SEED}): a random seed "
                         "is used.")  # fmt: skip
            seed = None
        prompt, loras = recorded_prompt_and_loras(values)
        try:  # what Generate would refuse, said now (a hostile pass filled 900,000 characters without a word)
            GenerationRequest(prompt=prompt or "-", checkpoint=checkpoint)
        except InvalidRequest as error:
            notes.append(f"{for_people(error)} Generate refuses it until that is changed.")
        lora_rows, lora_note = self.loras.rows_for(loras)
        return (
            prompt,
            gr.update(value=values.get("negative_prompt") or "", visible=spec.uses_negative_prompt(guidance)),
            checkpoint,
            steps_slider(checkpoint, steps),
            guidance_slider(checkpoint, guidance),
            width,
            height,
            seed if seed is not None else 0,
            seed is None,
            gr.update(
                choices=preset_choices(checkpoint, self.service.demo),
                value=preset_for(width, height, checkpoint, self.service.demo),
            ),
            # Each value changed to fit is flagged as the LoRA notes are (a hostile pass missed them below the note).
            "\n\n".join([checkpoint_note(checkpoint, self.service.demo), *("⚠️ " + as_text(n) for n in notes)]),
            checkpoint,
            {**settings, checkpoint: {"steps": steps, "guidance": guidance}},
            gr.Tabs(selected="generate"),
            # Open where there is something to see: the LoRAs filled in, or a note on one missing (a hostile pass found
            # that note unread inside the closed accordion, and the next run went without the LoRA).
            gr.update(open=True) if lora_note or loras else gr.skip(),
            lora_note,
            *lora_rows,
        )

    # ------------------------------------------------------------------------------------------------ compare tab
    def compare(self, prompt, negative, seed, randomize, width, height, raw_steps, raw_guidance, turbo_steps,
                request: gr.Request = None, mode=COMPARE_CHECKPOINTS, lora_checkpoint=TURBO.key, *rows):  # fmt: skip
        """Streams: (progress text, raw image, turbo image, slider, info). Failures as in `generate`: one line.
        `mode` COMPARE_LORAS runs `lora_checkpoint` without and with the LoRAs instead of Raw against Turbo. `rows`:
        the LoRA picker's values, then the init image and strength (both checkpoints start from it, at its size)."""
        if self.service.started(compare_session(request)):  # cancelled while it waited in the queue
            yield "**Cancelled** before it started", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        lora_rows, image = rows[:LORA_VALUES], rows[LORA_VALUES:]
        init, strength = (*image, *(None, DEFAULT_STRENGTH)[len(image) :])[:2]
        if mode == COMPARE_LORAS:
            yield from self._compare_loras(prompt, negative, seed, randomize, width, height, raw_steps, raw_guidance,
                                           turbo_steps, request, lora_checkpoint, lora_rows,
                                           init, strength)  # fmt: skip
            return
        try:
            loras = lora_choices(lora_rows)
            raw = build_request(prompt, negative, RAW.key, raw_steps, raw_guidance, width, height, seed, randomize, 1,
                                loras)  # fmt: skip
            raw, notes = started_from(raw, init, strength)
            turbo = raw.with_checkpoint(TURBO.key, steps=turbo_steps)
            events = self.service.compare(raw, turbo, compare_session(request))
        except Exception as error:  # noqa: BLE001
            yield error_note(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return

        def described(event: DoneEvent) -> str:
            r = event.result.request
            used = f", LoRAs {shown(loras_text(event.result.loras))}" if event.result.loras else ""
            return f"{r.steps} steps, guidance {r.guidance}, {event.result.timings.total_s:.2f} s{used}"

        names = {RAW.key: short_name(RAW), TURBO.key: short_name(TURBO)}
        yield from self._stream_pair(events, names, described, f"{short_name(RAW)} ↔ {short_name(TURBO)}", raw.seed,
                                     " · prompt encoded once for both", notes)  # fmt: skip

    def _compare_loras(self, prompt, negative, seed, randomize, width, height, raw_steps, raw_guidance, turbo_steps,
                       request, checkpoint, lora_rows, init=None, strength=DEFAULT_STRENGTH):  # fmt: skip
        """One checkpoint without the LoRAs, then with them, on one seed: the left image is without, the right with.
        Both start from the init image when one is given, as in Raw against Turbo."""
        try:
            spec = get_spec(checkpoint if checkpoint in CHECKPOINTS else TURBO.key)
            steps, guidance = (raw_steps, raw_guidance) if spec.key == RAW.key else (turbo_steps, None)
            req = build_request(prompt, negative, spec.key, steps, guidance, width, height, seed, randomize, 1,
                                lora_choices(lora_rows))  # fmt: skip
            req, notes = started_from(req, init, strength)
            events = self.service.compare_loras(req, compare_session(request))
        except Exception as error:  # noqa: BLE001
            yield error_note(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return

        def described(event: DoneEvent) -> str:
            return f"{event.result.timings.total_s:.2f} s, LoRAs {shown(loras_text(event.result.loras) or 'none')}"

        names = {WITHOUT_LORAS: f"{short_name(spec)} without LoRAs", WITH_LORAS: f"{short_name(spec)} with LoRAs"}
        yield from self._stream_pair(events, names, described, f"{short_name(spec)}: without ↔ with LoRAs", req.seed,
                                     notes=notes)  # fmt: skip

    def _stream_pair(self, events: Iterable[StepEvent | DoneEvent], names: dict[str, str],
                     described: Callable[[DoneEvent], str], pair_label: str, seed: int | None,
                     seed_note: str = "", notes: tuple[str, ...] = ()):  # fmt: skip
        """A two-run comparison's events as Compare's outputs: (progress, left image, right image, slider, info).
        `names`: each run's label and the name it is shown by, the left run first; `described(done event)`: its line
        in the info after its name; `seed`: the seed shown until a run reports the one it used; `notes`: what was
        done to the init image, said when done (Compare used to drop them)."""
        left, right = names
        started = time.monotonic()
        # Several workers run the two side by side (krea2/workers.py): each run keeps its own clock and progress line,
        # and says where it ran; one GPU runs them one after the other, as always.
        side_by_side = self.service.concurrent_generations > 1
        clocks: dict[str, StepClock] = {}
        lines: dict[str, str] = {}
        paths: dict[str, str] = {}
        info: dict[str, str] = {}
        used_seed = seed
        # The last comparison goes: a run that fails or is cancelled half-way must not leave its first image beside
        # the previous run's second, as if they were a pair.
        yield "Starting…", gr.update(value=None), gr.update(value=None), gr.update(value=None), ""
        try:
            for event in events:
                name = names[event.label]
                if isinstance(event, StepEvent):
                    clock = clocks.setdefault(event.label, StepClock())
                    line = f"**{name}** · " + clock.progress(event.step, event.total, time.monotonic() - started)
                    lines[event.label] = line
                    yield "  \n".join(lines.values()) if side_by_side else line, *[gr.skip()] * 4
                else:
                    paths[event.label] = self.service.image_file(event.generation.images[0])
                    used_seed = event.result.request.seed
                    where = f" on {event.result.device}" if side_by_side else ""
                    info[event.label] = f"**{name}**: {described(event)}{where}"
                    image = gr.update(value=paths[event.label], label=name)
                    lines[event.label] = f"{name} done"
                    yield ("  \n".join(lines.values()) if side_by_side else f"{name} done",
                           image if event.label == left else gr.skip(),
                           image if event.label == right else gr.skip(), gr.skip(), gr.skip())  # fmt: skip
            pair = gr.update(value=(paths[left], paths[right]), label=pair_label)
            ordered = [info[label] for label in (left, right) if label in info]
            # Side by side, each run encodes the prompt on its own worker: no "encoded once" note then.
            ordered.append(f"Seed **{used_seed}** for both{'' if side_by_side else seed_note}")
            yield "**Done**" + image_input_line(notes), gr.skip(), gr.skip(), pair, "  \n".join(ordered)
        except Cancelled:
            yield "**Cancelled**", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except Exception as error:  # noqa: BLE001
            yield error_note(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    # ------------------------------------------------------------------------------------------------ history tab
    @staticmethod
    def history_filter(
        search: str, checkpoint: str, favorites: bool, comparisons: bool, lora: str = ""
    ) -> HistoryFilter:
        return HistoryFilter(
            checkpoint=None if checkpoint in (None, "", "all") else checkpoint,
            favorites_only=bool(favorites),
            comparisons_only=bool(comparisons),
            text=(search or "")[:200],
            lora=lora if isinstance(lora, str) else "",
        )

    @friendly
    def history(self, search, checkpoint, favorites, comparisons, nav: dict | None, lora: str = "",
                direction: str = "first", keep_details: bool = False):  # fmt: skip
        """Returns (gallery, count text, nav state, detail visibility, the page's choices for multi-select, the Newer
        and Older buttons: each usable only where there is a page that way).
        `direction`: "first" page, "older", "newer", or the "same" page again. `keep_details` leaves the selected
        generation's details open (opening the tab, a ★ toggled: the generation shown is still there), where a new
        search or page hides them."""
        nav = dict(nav or {"stack": [None], "next": None})
        stack = list(nav.get("stack") or [None])
        if direction == "first":
            stack = [None]
        elif direction == "older" and nav.get("next") is not None:
            stack.append(nav["next"])
        elif direction == "newer" and len(stack) > 1:
            stack.pop()
        filters = self.history_filter(search, checkpoint, favorites, comparisons, lora)
        page = self.service.page(filters, stack[-1])
        total = self.service.count(filters)
        items, ids = [], []
        for generation in page.items:
            # Every image of a batch is a tile of its own (it can be viewed, downloaded and reused alone).
            star = "★ " if generation.favorite else ""
            tiles = [(image.position, self.service.thumb_path(generation, image.position)) for image in
                     generation.images] or [(0, str(self.service.placeholder))]  # fmt: skip
            for position, thumb in tiles:
                part = f" · {position + 1}/{len(tiles)}" if len(tiles) > 1 else ""
                spec = CHECKPOINTS.get(generation.checkpoint)
                name = short_name(spec) if spec else generation.checkpoint
                label = f"{star}#{generation.id}{part} · {name} · {generation.status}"
                items.append((thumb, f"{label} · {generation.prompt[:60]}"))
                ids.append([generation.id, position])
        first = (len(stack) - 1) * HISTORY_PAGE_SIZE
        last = first + len(page.items)
        shown = "0" if not page.items else "1" if last == 1 else f"{first + 1}–{last}"
        text = f"{shown} of {total} generation{'' if total == 1 else 's'}"
        choices = [(f"#{g.id} · {g.prompt[:40]}", g.id) for g in page.items]
        nav = {"stack": stack, "next": page.next_cursor, "ids": ids}
        details = gr.update() if keep_details else gr.update(visible=False)
        newer, older = gr.update(interactive=len(stack) > 1), gr.update(interactive=page.next_cursor is not None)
        return items, text, nav, details, gr.update(choices=choices, value=[]), newer, older

    def history_reopened(self, search, checkpoint, favorites, comparisons, nav: dict | None, lora: str = ""):
        """The History tab opened again: the page it was left on, read again (on the first page, new generations show
        up), with open details left open. It used to go back to the first page under a later page's details."""
        return self.history(search, checkpoint, favorites, comparisons, nav, lora, "same", keep_details=True)

    def history_tiles(self, search, checkpoint, favorites, comparisons, nav: dict | None, lora: str = ""):
        """The page shown, read again (a ★ toggled shows on its tile): (gallery, count text, nav state, detail
        visibility) as `history`, with the details left open and the multi-select's ticks left alone."""
        return self.history(search, checkpoint, favorites, comparisons, nav, lora, "same", keep_details=True)[:4]

    @friendly
    def select_history(self, nav: dict, evt: gr.SelectData):
        ids = (nav or {}).get("ids") or []
        selected = ids[self._selected(evt, len(ids))]
        generation, position = self._selection(selected)
        path = self.service.image_path(generation, position)
        star = "★ Unfavorite" if generation.favorite else "☆ Favorite"
        return (
            gr.update(visible=True),
            path,
            describe(generation, position),
            [generation.id, position],
            star,
            gr.update(value=path, visible=path is not None),
            gr.update(visible=False),
        )

    @friendly
    def history_source(self, selected: Any):
        """The init image a history row started from (hidden for text-to-image, or when its file is gone)."""
        generation, _ = self._selection(selected)
        if generation.source_sha256 is None:
            return gr.update(value=None, visible=False)
        path = self.service.store.source_path(generation.source_sha256)
        return gr.update(value=str(path) if path.is_file() else None, visible=path.is_file())

    @friendly
    def toggle_favorite(self, selected: Any):
        generation, _ = self._selection(selected)
        favorite = self.service.toggle_favorite(generation.id)
        return "★ Unfavorite" if favorite else "☆ Favorite"

    # ------------------------------------------------------------------------------------------------ bulk
    @staticmethod
    def picked(values: Any) -> list[int]:
        """The generation ids ticked in the multi-select (a client may send anything: only whole ids count)."""
        if not isinstance(values, list):
            return []
        return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]

    @staticmethod
    def pick_all(nav: dict | None):
        ids = (nav or {}).get("ids") or []
        return list(dict.fromkeys(i[0] for i in ids if isinstance(i, list) and i and isinstance(i[0], int)))

    @friendly
    def bulk_favorite(self, values: Any):
        ids = self.picked(values)
        if not ids:
            raise gr.Error("Tick one or more generations first.", print_exception=False)
        gr.Info(f"Marked {self.service.set_favorite(ids)} as favorite.")

    @friendly
    def bulk_ask_delete(self, values: Any):
        count = len(self.picked(values))
        if not count:
            raise gr.Error("Tick one or more generations first.", print_exception=False)
        return gr.update(visible=True, value=f"Confirm: delete {count} generation{'s' if count > 1 else ''}")

    @friendly
    def bulk_delete(self, values: Any):
        ids = self.picked(values)
        if ids:
            chosen = list(filter(None, map(self.service.store.get, ids)))
            copies = served_copies(self.files_of(chosen))
            deleted = self.service.delete_many(ids)
            remove_served_copies(copies)
            running = sum(generation.status == RUNNING for generation in chosen)  # a close count: one may finish
            kept = f" {running} still running {'was' if running == 1 else 'were'} kept." if running else ""
            gr.Info(f"Deleted {deleted} generation{'' if deleted == 1 else 's'}.{kept}")
        return gr.update(visible=False)

    @friendly
    def bulk_download(self, values: Any):
        ids = self.picked(values)
        if not ids:
            raise gr.Error("Tick one or more generations first.", print_exception=False)
        path, _ = self.service.export(ids)
        return gr.update(value=str(path), visible=True)

    @friendly
    def export_all(self, progress: gr.Progress = gr.Progress()):
        """(archive file, transfer line). A long history takes a while: the bar counts its generations."""
        path, count = self.service.export(None, counted(progress, "Exporting"))
        text = f"Exported {count} generations with their PNGs (history.json and history.csv inside)."
        gr.Info(text)
        return gr.update(value=str(path), visible=True), text

    @friendly
    def import_history(self, path: Any, progress: gr.Progress = gr.Progress()):
        """The transfer line; the bar counts the archive's generations (100,000 of them take minutes)."""
        if not isinstance(path, str) or not path:
            raise gr.Error("Choose a history export (.zip) to import.", print_exception=False)
        progress(0, desc="Reading the archive")
        added, skipped = self.service.import_archive(path, counted(progress, "Importing"))
        noun = "generation" if added == 1 else "generations"
        text = f"Imported {added} {noun}" + (f"; {skipped} were already here." if skipped else ".")
        gr.Info(text)
        return text

    @staticmethod
    def ask_delete():
        return gr.update(visible=True)

    @friendly
    def delete(self, selected: Any):
        generation, _ = self._selection(selected)
        copies = served_copies(self.files_of([generation]))
        self.service.delete(generation.id)
        remove_served_copies(copies)
        count = len(generation.images)
        gr.Info(f"Deleted generation #{generation.id}" + (f" and its {count} images." if count > 1 else "."))
        return gr.update(visible=False), None, gr.update(visible=False)

    # ------------------------------------------------------------------------------------------------ PNG info
    @friendly
    def png_info(self, path: str | None):
        if not path:
            return "", None, None
        info = self.service.png_info(path)
        values = dict(info["parsed"])
        if info["request"]:
            values.update({k: v for k, v in info["request"].items() if k in (*SETTINGS_FIELDS, *SOURCE_FIELDS)})
            if isinstance(info["request"].get("loras"), list):  # ours: the LoRAs with their hashes
                values["loras"] = info["request"]["loras"]
        return info["parameters"] or "", shown_json(info["request"] or info["parsed"]), values

    def png_provenance(self, path: str | None):
        """The PNG's AI disclosure (XMP) and C2PA manifest. A file that is not a readable PNG shows nothing here:
        `png_info` already says why, once."""
        if not path:
            return None
        try:
            return self.service.png_provenance(path)
        except PngInfoError:
            return None
        except Exception as error:  # noqa: BLE001
            raise user_error(error) from None

    @friendly
    def png_source(self, values: dict | None, placed: Placing | None):
        """After "send to Generate": the PNG's init image back in the editor, when this app still has it (it is
        named by its content address); otherwise a warning that says so, and the editor is left empty. The feather
        and outpaint go to 0 and the mask is shown beside the editor, in the same two steps as "reuse settings"
        (`reuse_source`, which says why, then `place_source`), with the same outputs."""
        digest = (values or {}).get("source_sha256")
        if not digest:
            return nothing_to_place(placed)
        try:
            image = self.service.store.load_source(str(digest))
            mask_digest = values.get("mask_sha256")
            mask = self.service.store.load_source(str(mask_digest)).convert("L") if mask_digest else None
        except StorageError:
            gr.Warning(f"This PNG was made from an init image ({str(digest)[:10]}) that is not in this app's data "
                       "folder; its settings were sent without it.")  # fmt: skip
            return nothing_to_place(placed)
        strength = values.get("strength")  # into the slider's range: a slider left out of it refuses the next run
        strength = min(max(strength, STRENGTH_RANGE[0]), STRENGTH_RANGE[1]) if plain_number(strength) else gr.skip()
        if mask is not None:
            say_mask_not_drawn()
        editor = editor_value(image.convert("RGB"), mask)
        return (strength, gr.Accordion(open=True), 0, 0, 0, 0, 0, editor_mask(editor),
                Placing.after(placed, editor, pending=True), None)  # fmt: skip

    @friendly
    def send_png_to_generate(self, values: dict | None, settings: dict):
        if not values:
            raise gr.Error("Drop a PNG with generation parameters first.", print_exception=False)
        return self._fill_generate(values, settings)
