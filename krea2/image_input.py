"""Images people start from: read, checked and brought to a size the model takes, before any GPU work.

Every refusal is one sentence (`InvalidImage`); every change made to an accepted image (orientation, colour mode,
size) is reported back as a note, so the UI can show what was done. Pillow does the reading: its decompression-bomb
guard is raised to an error here, and `load()` is forced so that a truncated file fails now, not halfway through a
generation.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import astuple, dataclass
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from .errors import InvalidRequest, Krea2Error
from .request import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "MPO")  # MPO: a JPEG with more pictures after it, as many phones save photos
# (GIF: the page's image editor takes one, so the API and the command line take it too)
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_SOURCE_PIXELS = 64 * 1024 * 1024  # what Pillow may decode (a 8192x8192 photo); beyond it is refused as a bomb
MAX_MODEL_PIXELS = MAX_SIDE * MAX_SIDE  # what is generated at most (2048², Turbo's native range)
OUTPAINT_MAX = 1024  # pixels added on one side at most
FEATHER_MAX = 64
DEFAULT_STRENGTH = 0.6  # img2img's, where no strength is given: the picture's layout kept, its details redrawn
MASKED_STRENGTH = 1.0  # inpaint's and outpaint's: the masked area redrawn from noise


class InvalidImage(Krea2Error):
    """An input image or mask that cannot be used; the message says why."""


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # RGB, both sides multiples of 16 within the model's limits
    notes: tuple[str, ...]  # what was done to the file to get here, for the user
    sha256: str  # of the file as uploaded (its content address in the data dir)
    upright_size: tuple[int, int] | None = None  # the file's picture, turned upright, before any resizing


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_image(source: bytes | str | Path | Image.Image, what: str = "image") -> tuple[Image.Image, bytes]:
    """The decoded picture and the bytes it came from. Refuses what is not a PNG, JPEG, WebP or GIF file, oversized or
    bomb files, and files that do not decode to the end."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise InvalidImage(f"{path.name!r} is a folder; the {what} must be a file (PNG, JPEG, WebP or GIF).")
        if not path.is_file():
            raise InvalidImage(f"The {what} file {path.name!r} does not exist.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidImage(f"The {what} file is larger than {MAX_FILE_BYTES // 2**20} MB.")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        raise InvalidImage(f"The {what} must be an image file (PNG, JPEG, WebP or GIF).")
    if not data:
        raise InvalidImage(f"The {what} file is empty.")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImage(f"The {what} file is larger than {MAX_FILE_BYTES // 2**20} MB.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a warning is a refusal here
        try:
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise InvalidImage(f"The {what} is a {image.format} file; use a PNG, JPEG, WebP or GIF image.")
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise InvalidImage(
                    f"The {what} is {width}×{height} pixels, more than the {MAX_SOURCE_PIXELS // 2**20} million "
                    "pixels accepted."
                )
            image.load()
        except InvalidImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImage(f"The {what} declares an enormous size (a decompression bomb); refused.") from None
        except Image.UnidentifiedImageError:  # its message names a BytesIO object, nothing a person can use
            raise InvalidImage(
                f"The {what} could not be read as an image: use a PNG, JPEG, WebP or GIF file."
            ) from None
        except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "truncated", "broken"
            raise InvalidImage(f"The {what} could not be read as an image ({error}).") from None
    return image, data


def to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Upright RGB: EXIF orientation applied; alpha flattened onto white; CMYK, 16-bit, palette and grey converted."""
    transposed = ImageOps.exif_transpose(image)
    if transposed is not None and transposed.size != image.size:
        notes.append("rotated as its EXIF orientation says")
    image = transposed if transposed is not None else image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scaled to 8 bits, not clipped
        image = image.point(lambda value: value / 256).convert("L")
        notes.append("16-bit image reduced to 8 bits")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent areas filled with white")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return image.convert("RGB")


def model_size(width: int, height: int, limit: int = MAX_MODEL_PIXELS) -> tuple[int, int]:
    """The size an image of `width` by `height` is generated at: the same aspect ratio, at most `limit` pixels and
    MAX_SIDE a side, at least MIN_SIDE a side, each side a multiple of 16 (rounded to the nearest, halves up)."""
    scale = min(1.0, math.sqrt(limit / (width * height)), MAX_SIDE / max(width, height))
    scale = max(scale, MIN_SIDE / min(width, height))

    def side(value: float) -> int:
        return min(MAX_SIDE, max(MIN_SIDE, SIDE_MULTIPLE * math.floor(value / SIDE_MULTIPLE + 0.5)))

    return side(width * scale), side(height * scale)


def prepare_image(source: bytes | str | Path | Image.Image, size: tuple[int, int] | None = None) -> PreparedImage:
    """An init image ready for the model: upright RGB at `size` (or at `model_size` of its own size), with notes."""
    image, data = open_image(source)
    notes: list[str] = []
    if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:  # animated WebP, PNG or GIF: Pillow reads frame 0
        # (an MPO's first picture is the photo; the others are a phone's previews or depth, nothing to mention)
        notes.append(f"first of its {image.n_frames} frames used")
    image = to_rgb(image, notes)
    upright = image.size  # after the EXIF turn: the sides a person sees
    target = size or model_size(*upright)
    if upright != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
        note = f"resized from {upright[0]}×{upright[1]} to {target[0]}×{target[1]}"
        if not size and not same_shape(upright, target, slack=SIDE_MULTIPLE):  # past what rounding to 16 explains
            note += f", which changes its shape (the model takes sides of {MIN_SIDE} to {MAX_SIDE} pixels)"
        notes.append(note)
    return PreparedImage(image=image, notes=tuple(notes), sha256=sha256_of(data), upright_size=upright)


def prepare_mask(
    source: bytes | str | Path | Image.Image,
    size: tuple[int, int],
    feather: int = 0,
    painted_on: tuple[int, int] | None = None,
) -> PreparedImage:
    """A mask for an image of `size`: grey levels, white = repaint, black = keep. A painted layer with transparency
    counts its opaque strokes as white. A mask of the same aspect ratio as `size` or as `painted_on` (the image as
    uploaded, whose aspect `model_size` changes when it is wider than the model's sides allow) is resized (and says
    so); another aspect ratio is refused. `feather` blurs its edge by that many pixels."""
    image, data = open_image(source, "mask")
    notes: list[str] = []
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        mask = alpha if alpha.getextrema()[0] < 255 else image.convert("L")
    else:
        mask = image.convert("L")
    if mask.size != size:
        (mw, mh), (w, h) = mask.size, size
        # The image itself may have been brought to multiples of 16, which bends its shape by up to 16 pixels (or 1 %
        # of its shorter side, where that is more): a mask painted on the original must still fit.
        bent = max(SIDE_MULTIPLE, min(w, h) / 100)
        if not same_shape(mask.size, size, slack=bent) and not same_shape(mask.size, painted_on):
            shown = painted_on or size
            raise InvalidImage(f"The mask is {mw}×{mh} but the image is {shown[0]}×{shown[1]}; they must have the "
                               "same shape.")  # fmt: skip
        mask = mask.resize(size, Image.Resampling.BILINEAR)
        notes.append(f"mask resized from {mw}×{mh} to {w}×{h}")
    if mask.getextrema()[1] == 0:
        raise InvalidImage("The mask is empty: paint the area to repaint in white.")
    if not 0 <= feather <= FEATHER_MAX:
        raise InvalidImage(f"The mask feather must be between 0 and {FEATHER_MAX} pixels.")
    if feather:
        mask = mask.filter(ImageFilter.GaussianBlur(feather / 2))
    return PreparedImage(image=mask, notes=tuple(notes), sha256=sha256_of(data))


def same_shape(picture: tuple[int, int], reference: tuple[int, int] | None, slack: float = 1) -> bool:
    """Whether a picture of size `picture` has the shape of one of size `reference`, whatever the scale of either:
    their aspect ratios within what `slack` pixels on the reference's shorter side change (a mask painted on an
    image: one; a side rounded to a multiple of 16: 16)."""
    if reference is None:
        return False
    (pw, ph), (w, h) = picture, reference
    return abs((pw / ph) / (w / h) - 1) <= slack / min(w, h)


@dataclass(frozen=True)
class Outpaint:
    """Pixels to add on each side."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        for name in ("left", "right", "top", "bottom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= OUTPAINT_MAX:
                raise InvalidImage(f"Outpaint {name} must be a whole number of pixels from 0 to {OUTPAINT_MAX}.")
        if not (self.left or self.right or self.top or self.bottom):
            raise InvalidImage("Outpaint needs at least one side to extend.")


def whole_number(text: object) -> int | None:
    """`text` as a whole number of pixels (ASCII digits, spaces around allowed), or None. str.isdigit() alone took
    "²", which int() then refused with a ValueError the user saw as "Something went wrong"."""
    text = str(text).strip()
    # Ten digits at most: int() refuses a string past 4,300 digits with a ValueError of its own.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def parse_feather(text: object) -> int:
    """The API's and the CLI's feather field: a whole number of pixels."""
    pixels = whole_number(text)
    if pixels is None:
        raise InvalidRequest("feather", text, "must be a whole number of pixels")
    return pixels


def parse_outpaint(text: str) -> Outpaint:
    """The API's and the CLI's "left,right,top,bottom" outpaint field."""
    sides = [whole_number(part) for part in str(text).split(",")]
    if len(sides) != 4 or None in sides:
        raise InvalidRequest("outpaint", text, "must be four whole numbers: left,right,top,bottom")
    return Outpaint(*sides)


def outpaint_canvas(image: Image.Image, sides: Outpaint, feather: int = 16) -> tuple[Image.Image, Image.Image, str]:
    """The extended canvas (the original pasted in, the new area filled with its stretched, blurred edges), the mask
    of the new area (with `feather` pixels of overlap into the original, so the seam is repainted too), and a note
    saying the size. Each side is extended by a multiple of 16 (rounded up, and said), so a picture of the model's
    sizes stays pixel for pixel as it was: 8 pixels used to give a canvas of 264 that was then stretched to 272.
    A canvas past the model's limits is brought within them, which the note says."""
    asked = sides
    sides = Outpaint(*(-(-side // SIDE_MULTIPLE) * SIDE_MULTIPLE for side in astuple(sides)))
    w, h = image.size
    width, height = w + sides.left + sides.right, h + sides.top + sides.bottom
    # Initial fill: the picture stretched over the canvas, blurred, so a partial repaint starts from its colours.
    fill = image.resize((width, height), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(24))
    canvas = fill.copy()
    canvas.paste(image, (sides.left, sides.top))
    mask = Image.new("L", (width, height), 255)
    inner = Image.new("L", (w, h), 0)
    mask.paste(inner, (sides.left, sides.top))
    if feather:
        grown = mask.filter(ImageFilter.MaxFilter(2 * (feather // 2) + 1))
        mask = grown.filter(ImageFilter.GaussianBlur(feather / 3))
    target = model_size(width, height)
    note = f"canvas extended to {width}×{height}"
    if sides != asked:
        note += " (each side extended by a multiple of 16 pixels)"
    if target != (width, height):
        canvas = canvas.resize(target, Image.Resampling.LANCZOS)
        mask = mask.resize(target, Image.Resampling.BILINEAR)
        note += f", generated at {target[0]}×{target[1]}"
    return canvas, mask, note


def upscaled(image: Image.Image, factor: float) -> tuple[Image.Image, str]:
    """`image` enlarged by `factor` (the hi-res pass's first half), to multiples of 16 within MAX_SIDE: the pixel
    budget of the largest size the model draws, which may make the factor smaller than asked (the note says)."""
    if not 1.0 < factor <= 4.0:
        raise InvalidImage("The upscale factor must be above 1 and at most 4.")
    w, h = image.size
    target = model_size(round(w * factor), round(h * factor))
    if target[0] <= w and target[1] <= h:  # a pass that would only redraw the picture at its own size
        raise InvalidImage(f"A {w}×{h} picture is as large as the model draws at its shape (at most {MAX_SIDE} "
                           f"pixels a side, {MAX_SIDE}×{MAX_SIDE} pixels' worth): it cannot be upscaled.")  # fmt: skip
    note = f"upscaled ×{factor:g} to {target[0]}×{target[1]}"
    if target[0] < round(w * factor) - SIDE_MULTIPLE:
        side_bound = max(round(w * factor), round(h * factor)) > MAX_SIDE
        limit = f"{MAX_SIDE} pixels a side" if side_bound else f"{MAX_SIDE}×{MAX_SIDE} pixels' worth"
        note += f" (the most the model draws is {limit})"
    return image.resize(target, Image.Resampling.LANCZOS), note
