"""Init images for the UI, the API and the CLI: uploads prepared (krea2.image_input), stored once in the data folder
(content-addressed, before any row points at them), and turned into the request's `ImageInput`; history rows turned
back into one ("reuse settings"); the hi-res pass (upscale, then img2img at low strength)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from krea2.errors import InvalidRequest
from krea2.image_input import (
    DEFAULT_STRENGTH,
    MASKED_STRENGTH,
    InvalidImage,
    Outpaint,
    outpaint_canvas,
    prepare_image,
    prepare_mask,
    upscaled,
)
from krea2.request import GenerationRequest, ImageInput
from storage import HistoryStore
from storage.files import png_address
from storage.models import Generation

ImageSource = bytes | str | Path | Image.Image
HIRES_STRENGTH = 0.35  # enough to add detail at the new size, little enough to keep the picture


@dataclass(frozen=True)
class PreparedSource:
    source: ImageInput
    notes: tuple[str, ...]  # what was done to the upload (resized, rotated...), for the user

    @property
    def size(self) -> tuple[int, int]:
        return self.source.image.size


def start_size(width: Any, height: Any) -> tuple[int, int] | None:
    """The size to generate from an image at: both sides, checked as a request checks them, or None (neither given)
    for the image's own. One side alone is refused: it used to be dropped without a word."""
    if (width is None) != (height is None):
        missing, given = ("height", "width") if height is None else ("width", "height")
        raise InvalidRequest(missing, None, f"must be given with {given} when there is an image (or give neither: the "
                                            "image's own size is used)")  # fmt: skip
    if width is None:
        return None
    checked = GenerationRequest(prompt="-", width=width, height=height)
    return checked.width, checked.height


def image_source(
    image: ImageSource,
    *,
    strength: float | str | None = None,
    mask: ImageSource | None = None,
    feather: int = 0,
    outpaint: Outpaint | None = None,
    size: tuple[int, int] | None = None,
) -> PreparedSource:
    """An upload (and its optional mask) as the request's start, nothing written yet (`store_source` keeps it).
    With `outpaint`, the canvas grows and the mask is the new area (a mask given too is refused: outpaint makes its
    own). `size`: the size to generate at (default: the image's own, brought to multiples of 16 within the model's
    limits). `strength` (checked by `ImageInput`) defaults to 1 with a mask or outpaint, else to img2img's 0.6."""
    if feather and mask is None and outpaint is None:  # it softens a mask's edge: alone it would do nothing, unsaid
        raise InvalidImage("A feather softens a mask's edge: give a mask or outpaint sides too, or a feather of 0.")
    prepared = prepare_image(image, size)
    notes = list(prepared.notes)
    picture, mask_picture, mode = prepared.image, None, ""
    if outpaint is not None:
        if mask is not None:
            raise InvalidImage("Outpaint makes its own mask; leave the mask empty.")
        picture, mask_picture, note = outpaint_canvas(picture, outpaint, feather=feather or 16)
        notes.append(note)
        mode = "outpaint"
    elif mask is not None:
        prepared_mask = prepare_mask(mask, picture.size, feather, painted_on=prepared.upright_size)
        mask_picture = prepared_mask.image
        notes += prepared_mask.notes
    if strength is None:
        strength = MASKED_STRENGTH if mask_picture is not None else DEFAULT_STRENGTH
    source = ImageInput(
        image=picture,
        strength=strength,
        mask=mask_picture,
        image_sha256=png_address(picture),
        mask_sha256=png_address(mask_picture) if mask_picture is not None else None,
        mode=mode,
    )
    return PreparedSource(source, tuple(notes))


def store_source(store: HistoryStore, source: ImageInput) -> None:
    """Keep an init image (and mask) in the data folder under the addresses the request carries, before the row that
    names them is written."""
    for picture, digest in ((source.image, source.image_sha256), (source.mask, source.mask_sha256)):
        if picture is not None and store.put_source(picture) != digest:
            raise ValueError("an init image changed after it was prepared")


def reused_source(store: HistoryStore, generation: Generation) -> ImageInput | None:
    """The start a history row was made from, read back from the data folder (None for text-to-image)."""
    if generation.source_sha256 is None:
        return None
    mask = store.load_source(generation.mask_sha256) if generation.mask_sha256 else None
    return ImageInput(
        image=store.load_source(generation.source_sha256).convert("RGB"),
        strength=generation.strength if generation.strength is not None else 1.0,
        mask=mask.convert("L") if mask is not None else None,
        image_sha256=generation.source_sha256,
        mask_sha256=generation.mask_sha256,
        mode=generation.mode if generation.mode != "txt2img" else "",
    )


def hires_source(image: ImageSource, factor: float, strength: float = HIRES_STRENGTH) -> PreparedSource:
    """The hi-res pass's start: a result upscaled by `factor` (within the model's size limits, said in the note)."""
    picture = prepare_image(image).image
    bigger, note = upscaled(picture, factor)
    source = ImageInput(image=bigger, strength=strength, image_sha256=png_address(bigger), mode="hires")
    return PreparedSource(source, (note,))
