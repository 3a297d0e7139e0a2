"""Gradio's image-editor values <-> init images: the editor's background is the picture, its painted layers the
inpaint mask (any stroke, any colour: its opacity is what counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageChops, ImageOps

from krea2.image_input import InvalidImage, Outpaint
from studio.sources import PreparedSource, image_source

STRENGTH_RANGE = (0.05, 1.0)  # the strength sliders'
DEFAULT_FEATHER = 8  # the feather slider's start, in pixels
# The reused mask's preview (see `reused_mask_view`): the start picture with the part Generate repaints tinted halfway
# to magenta, a colour that stands out on photos and on the demo model's ten colours alike, and no wider or taller than
# PREVIEW_SIDE (it is a reminder beside the editor, not a second copy of a 2048² picture sent to the page).
MASK_TINT = (255, 0, 200)
PREVIEW_SIDE = 512
REUSED_MASK_NOTE = (
    "**Inpaint mask from the reused settings** (the editor above does not draw it): Generate repaints the tinted "
    "part; painting in the editor replaces it."
)
# Chromium sends the reused layer back pixel for pixel (measured); a level or two of rounding in another browser's
# canvas still counts as the same mask, while a stroke or the eraser changes whole pixels by up to 255.
SAME_MASK_LEVELS = 2


def painted_mask(layers: list[Any], size: tuple[int, int]) -> Image.Image | None:
    """The union of the layers' opaque pixels as a grey mask, or None when nothing was painted."""
    mask = Image.new("L", size, 0)
    for layer in layers or []:
        if isinstance(layer, Image.Image):
            alpha = layer.convert("RGBA").getchannel("A")
            if alpha.size != size:
                alpha = alpha.resize(size, Image.Resampling.NEAREST)
            mask = ImageChops.lighter(mask, alpha)
    return mask if mask.getextrema()[1] > 0 else None


def holds_picture(value: Any) -> bool:
    """Whether an editor value holds a picture (its background); without one Generate is text-to-image."""
    return isinstance(value, dict) and isinstance(value.get("background"), Image.Image)


def feather_after_upload(value: Any) -> int | None:
    """The feather once a picture lands in the editor: the default for a new picture, None (the slider left alone)
    when the picture came with its mask painted in. "Use these settings" fills the editor with the mask already
    feathered and the feather at 0, and the editor reports that as an upload too: resetting it then feathered the mask
    twice (a hostile pass: the same settings drew another image)."""
    return None if editor_mask(value) is not None else DEFAULT_FEATHER


def outpaint_sides(*sides: Any) -> Outpaint | None:
    values = [int(side or 0) for side in sides]
    return Outpaint(*values) if any(values) else None


def editor_source(
    value: Any, strength: Any, feather: Any, sides: tuple[Any, ...], reused: Image.Image | None = None
) -> PreparedSource | None:
    """The Generate tab's start, or None when the editor holds no picture (text-to-image). `reused`: the mask a reuse
    brought back (`reused_mask_view`), which the editor does not draw: outpaint is refused with it in other words."""
    if not holds_picture(value):
        return None
    background: Image.Image = value["background"]
    mask = painted_mask(value.get("layers") or [], background.size)
    outpaint = outpaint_sides(*sides)
    if outpaint is not None and mask is not None:  # the API and the CLI refuse the same; the strokes were dropped
        if holds_reused_mask(value, reused):  # no strokes to be seen in the editor
            raise InvalidImage("Outpaint makes its own mask: drop the reused inpaint mask shown under the editor (a "
                               "stroke of the eraser in the editor does), or set the outpaint sides to 0.")  # fmt: skip
        raise InvalidImage("Outpaint makes its own mask: clear the painted strokes, or set the outpaint sides to 0.")
    feather = int(feather or 0) if mask is not None or outpaint is not None else 0  # the slider is always there
    return image_source(background, strength=strength, mask=mask, feather=feather, outpaint=outpaint)


def describe_start(
    value: Any, strength: Any, feather: Any, sides: tuple[Any, ...], reused: Image.Image | None = None
) -> str:
    """What Generate will do with the editor's picture, shown as soon as it is there (size, mode and every change
    made to it), so nobody has to generate to find out; empty without a picture. A picture the model cannot take
    raises its one-sentence `InvalidImage` here rather than after a click."""
    start = editor_source(value, strength, feather, sides, reused)
    if start is None:
        return ""
    source, (width, height) = start.source, start.size
    if source.mode == "outpaint":
        what = "outpaint"
    elif source.mask is not None:
        covered = sum(count for level, count in enumerate(source.mask.histogram()) if level >= 128)
        what = f"inpaint of {100 * covered / (width * height):.0f}% of the picture"
    else:
        what = f"img2img at strength {float(strength):.2f}"
    picture = value["background"]
    notes = "".join(f" {note[0].upper()}{note[1:]}." for note in start.notes)
    return f"Init image {picture.width}×{picture.height}: {what}, generated at {width}×{height}.{notes}"


def mask_preview(picture: Image.Image, mask: Image.Image | None) -> Image.Image | None:
    """`picture` with what `mask` repaints tinted halfway to MASK_TINT (a feathered edge by its grey level) and the
    rest unchanged, scaled down to fit PREVIEW_SIDE; None without a mask or with an empty one (nothing repainted)."""
    if mask is None or mask.getextrema()[1] == 0:
        return None
    picture = picture.convert("RGB")
    tinted = Image.blend(picture, Image.new("RGB", picture.size, MASK_TINT), 0.5)
    preview = Image.composite(tinted, picture, mask.convert("L").resize(picture.size))
    return ImageOps.contain(preview, (PREVIEW_SIDE, PREVIEW_SIDE)) if max(preview.size) > PREVIEW_SIDE else preview


def editor_mask(value: Any) -> Image.Image | None:
    """The mask an editor value paints (its layers' union at the picture's size), None without a picture or paint."""
    if not holds_picture(value):
        return None
    return painted_mask(value.get("layers") or [], value["background"].size)


def reused_mask_view(value: Any, reused: Image.Image | None) -> tuple[Any, Any]:
    """(the reused-mask box's visibility, its preview) for the editor's value. Gradio 6.31's editor does not draw a
    layer the app sets into an emptied editor (ui/handlers.py `reuse_source`), so after "Use these settings" or PNG
    info's "Send to Generate" on an inpaint the mask Generate uses (`reused`, as it went into the editor) is shown
    beside it, for as long as the editor still holds it. Decided from what the editor sends back, measured in
    Chromium: after the reuse, the same layer again; after a stroke or the eraser, a layer with only what was drawn
    (the reused mask is gone); after another picture or Clear canvas, an empty layer."""
    if not holds_reused_mask(value, reused):
        return gr.update(visible=False), None
    return gr.update(visible=True), mask_preview(value["background"], editor_mask(value))


def holds_reused_mask(value: Any, reused: Image.Image | None) -> bool:
    """Whether the editor's value still paints the mask a reuse brought back (`reused_mask_view` says how it goes)."""
    mask = editor_mask(value)
    if reused is None or mask is None or mask.size != reused.size:
        return False
    return ImageChops.difference(mask, reused).getextrema()[1] <= SAME_MASK_LEVELS


@dataclass(frozen=True)
class Placing:
    """A picture the app put into the editor (Send to img2img, "reuse settings", PNG info's "Send to Generate"): its
    number, which the page's mark takes with it (`stale_echo`), and the editor value itself while a reuse
    holds it between its two steps (ui/handlers.py `reuse_source`, `place_source`), then None (a session keeps no
    second copy of the picture)."""

    value: dict[str, Any] | None
    mark: int
    # Set by a reuse's first step until its second has placed it: a second step that finds it unset does nothing (a
    # double click or a Send to img2img between the two steps had it blank the note under a picture).
    pending: bool = False

    @classmethod
    def after(cls, placing: Placing | None, value: dict[str, Any] | None, pending: bool = False) -> Placing:
        """The next placing after `placing` (None: the first in this session)."""
        return cls(value, (placing.mark if placing is not None else 0) + 1, pending)


def stale_echo(mark: Any, placing: Placing | None) -> bool:
    """Whether an editor event was sent before the last picture the app put in was in: the page's mark it carries
    (read when the page sends it) is not that picture's number yet. The handler that puts a picture in says the note
    itself and hands the page the number with the picture, in the same answer (ui/layout.py): Gradio 6.31's editor
    sends events as its value goes and comes (the emptying before a reuse, the picture's arrival), some with what it
    held before or nothing, and they reached the server after the new picture's note: answered, they said the old
    picture, blanked the note or reset the feather (measured in Chromium)."""
    return placing is not None and (int(mark) if isinstance(mark, (int, float)) else 0) != placing.mark


def editor_value(image: Image.Image | str, mask: Image.Image | None = None) -> dict[str, Any]:
    """What the editor shows for a picture (and a mask, as a white layer where it repaints)."""
    picture = Image.open(image).convert("RGB") if isinstance(image, str) else image
    layers = []
    if mask is not None:
        layer = Image.new("RGBA", picture.size, (255, 255, 255, 0))
        layer.putalpha(mask.resize(picture.size))
        layers.append(layer)
    return {"background": picture, "layers": layers, "composite": picture}
