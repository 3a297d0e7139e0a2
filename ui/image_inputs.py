"""Gradio's image-editor values <-> init images: the editor's background is the picture, its painted layers the
inpaint mask (any stroke, any colour: its opacity is what counts)."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from krea2.image_input import InvalidImage, Outpaint
from studio.sources import PreparedSource, image_source

STRENGTH_RANGE = (0.05, 1.0)  # the strength sliders'
DEFAULT_FEATHER = 8  # the feather slider's start, in pixels


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


def feather_after_upload(value: Any) -> Any:
    """The feather once a picture lands in the editor: the default for a new picture, the slider left alone when the
    picture came with its mask painted in. "Use these settings" fills the editor with the mask already feathered and
    the feather at 0, and the editor reports that as an upload too: resetting it then feathered the mask twice (a
    hostile pass: the same settings drew another image)."""
    if isinstance(value, dict) and isinstance(value.get("background"), Image.Image):
        if painted_mask(value.get("layers") or [], value["background"].size) is not None:
            return gr.skip()
    return DEFAULT_FEATHER


def outpaint_sides(*sides: Any) -> Outpaint | None:
    values = [int(side or 0) for side in sides]
    return Outpaint(*values) if any(values) else None


def editor_source(value: Any, strength: Any, feather: Any, sides: tuple[Any, ...]) -> PreparedSource | None:
    """The Generate tab's start, or None when the editor holds no picture (text-to-image)."""
    if not isinstance(value, dict) or not isinstance(value.get("background"), Image.Image):
        return None
    background: Image.Image = value["background"]
    mask = painted_mask(value.get("layers") or [], background.size)
    outpaint = outpaint_sides(*sides)
    if outpaint is not None and mask is not None:  # the API and the CLI refuse the same; the strokes were dropped
        raise InvalidImage("Outpaint makes its own mask: clear the painted strokes, or set the outpaint sides to 0.")
    feather = int(feather or 0) if mask is not None or outpaint is not None else 0  # the slider is always there
    return image_source(background, strength=strength, mask=mask, feather=feather, outpaint=outpaint)


def describe_start(value: Any, strength: Any, feather: Any, sides: tuple[Any, ...]) -> str:
    """What Generate will do with the editor's picture, shown as soon as it is there (size, mode and every change
    made to it), so nobody has to generate to find out; empty without a picture. A picture the model cannot take
    raises its one-sentence `InvalidImage` here rather than after a click."""
    start = editor_source(value, strength, feather, sides)
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


def editor_value(image: Image.Image | str, mask: Image.Image | None = None) -> dict[str, Any]:
    """What the editor shows for a picture (and a mask, as a white layer where it repaints)."""
    picture = Image.open(image).convert("RGB") if isinstance(image, str) else image
    layers = []
    if mask is not None:
        layer = Image.new("RGBA", picture.size, (255, 255, 255, 0))
        layer.putalpha(mask.resize(picture.size))
        layers.append(layer)
    return {"background": picture, "layers": layers, "composite": picture}
