"""Init images and masks as people upload them: formats, orientation, colour modes, sizes, and the refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from krea2.image_input import (
    DEFAULT_STRENGTH,
    MASKED_STRENGTH,
    MAX_SOURCE_PIXELS,
    InvalidImage,
    Outpaint,
    model_size,
    outpaint_canvas,
    prepare_image,
    prepare_mask,
    upscaled,
)


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_the_four_formats_are_read(fmt: str) -> None:
    prepared = prepare_image(encoded(Image.new("RGB", (512, 384), (200, 30, 30)), fmt))
    assert prepared.image.mode == "RGB" and prepared.image.size == (512, 384)
    assert prepared.notes == ()
    assert abs(int(prepared.image.getpixel((10, 10))[0]) - 200) <= 3
    assert len(prepared.sha256) == 64


def test_other_formats_and_broken_files_are_refused() -> None:
    with pytest.raises(InvalidImage, match="BMP file; use a PNG, JPEG, WebP or GIF"):
        prepare_image(encoded(Image.new("RGB", (64, 64)), "BMP"))
    with pytest.raises(InvalidImage, match="empty"):
        prepare_image(b"")
    with pytest.raises(InvalidImage, match=r"could not be read as an image: use a PNG, JPEG, WebP or GIF file\.$"):
        prepare_image(b"not an image at all")  # not Pillow's "cannot identify image file <_io.BytesIO object at 0x...>"
    truncated = encoded(Image.effect_noise((512, 512), 64).convert("RGB"), "PNG")[:-2000]
    with pytest.raises(InvalidImage, match="could not be read"):
        prepare_image(truncated)


def test_a_folder_is_not_called_missing(tmp_path) -> None:
    with pytest.raises(InvalidImage, match="is a folder; the image must be a file"):
        prepare_image(tmp_path)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG whose header declares far more pixels than accepted (its data is tiny: one repeated row).
    side = int(MAX_SOURCE_PIXELS**0.5) + 1024
    bomb = encoded(Image.new("1", (side, side)), "PNG")
    assert len(bomb) < 5_000_000
    with pytest.raises(InvalidImage, match=r"bomb|million pixels"):
        prepare_image(bomb)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 256, 256))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    prepared = prepare_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert prepared.image.size == (256, 512)
    assert "EXIF" in " ".join(prepared.notes)
    assert sum(prepared.image.getpixel((128, 64))) > 600  # the white half is now on top


def test_alpha_cmyk_and_16_bit_are_converted() -> None:
    rgba = Image.new("RGBA", (256, 256), (255, 0, 0, 0))
    prepared = prepare_image(encoded(rgba))
    assert prepared.image.getpixel((5, 5)) == (255, 255, 255)
    assert "transparent" in prepared.notes[0]
    cmyk = prepare_image(encoded(Image.new("CMYK", (256, 256), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.image.mode == "RGB" and cmyk.image.getpixel((5, 5))[0] > 200
    grey16 = Image.fromarray(np.full((256, 256), 40000, dtype=np.uint16))
    prepared = prepare_image(encoded(grey16))
    assert prepared.image.mode == "RGB" and abs(prepared.image.getpixel((5, 5))[0] - 40000 // 256) <= 1


def test_sizes_are_brought_to_multiples_of_16_within_limits_and_said() -> None:
    assert model_size(1000, 750) == (1008, 752)
    assert model_size(4000, 3000) == (2048 * 1, 1536)  # at most 2048² worth of pixels, aspect kept
    assert model_size(100, 80) == (320, 256)  # at least 256 a side
    prepared = prepare_image(encoded(Image.new("RGB", (1000, 750))))
    assert prepared.image.size == (1008, 752)
    assert prepared.notes == ("resized from 1000×750 to 1008×752",)
    assert prepare_image(encoded(Image.new("RGB", (640, 480))), size=(512, 512)).image.size == (512, 512)


@pytest.mark.parametrize("kind", ["WEBP", "PNG", "GIF"])
def test_an_animated_picture_gives_its_first_frame_and_says_so(kind: str) -> None:
    frames = [Image.new("RGB", (256, 256), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, kind, save_all=True, append_images=frames[1:], lossless=True)
    prepared = prepare_image(buffer.getvalue())
    assert prepared.notes == ("first of its 3 frames used",)
    assert prepared.image.getpixel((10, 10)) == (200, 30, 30)


def test_masks() -> None:
    size = (512, 512)
    white_square = Image.new("L", (256, 256), 0)
    white_square.paste(255, (64, 64, 192, 192))
    mask = prepare_mask(encoded(white_square), size)
    assert mask.image.size == size and mask.notes == ("mask resized from 256×256 to 512×512",)
    painted = Image.new("RGBA", size, (0, 0, 0, 0))
    painted.paste((255, 0, 0, 255), (0, 0, 100, 100))  # a brush layer: the opaque strokes are the mask
    from_layer = prepare_mask(encoded(painted), size).image
    assert from_layer.getpixel((50, 50)) == 255 and from_layer.getpixel((300, 300)) == 0
    feathered = prepare_mask(encoded(white_square), size, feather=16).image
    assert 0 < feathered.getpixel((128, 256)) < 255  # the edge is soft
    with pytest.raises(InvalidImage, match="same shape"):
        prepare_mask(encoded(Image.new("L", (300, 100), 255)), size)
    for small in ((64, 16), (40, 8)):  # a tiny mask of another shape too, whatever it was painted on (review)
        with pytest.raises(InvalidImage, match="same shape"):
            prepare_mask(encoded(Image.new("L", small, 255)), size, painted_on=size)
    with pytest.raises(InvalidImage, match="empty"):
        prepare_mask(encoded(Image.new("L", size, 0)), size)


def test_a_mask_painted_on_a_picture_wider_than_the_model_takes_still_fits() -> None:
    """A 12:1 panorama is generated at the widest shape the model takes (2048 by 256 is 8:1), so the mask painted on it
    has another aspect ratio than the picture generated; it is the picture's as uploaded, and is taken with it."""
    from studio.sources import image_source

    panorama = Image.new("RGB", (3072, 256), (30, 30, 200))
    mask = Image.new("L", panorama.size, 0)
    mask.paste(255, (1536, 0, 3072, 256))  # the right half
    prepared = image_source(encoded(panorama), mask=encoded(mask))
    width, height = prepared.source.image.size
    assert width / height < 12 and prepared.source.mask.size == (width, height)
    repainted = prepared.source.mask
    assert repainted.getpixel((width // 4, height // 2)) == 0
    assert repainted.getpixel((3 * width // 4, height // 2)) == 255
    assert "mask resized from 3072×256" in " ".join(prepared.notes)
    assert "resized from 3072×256 to 2048×256, which changes its shape" in prepared.notes[0]  # said, not only done
    for wide in ((9000, 1000), (4000, 400)):  # at any scale (the review found a 9000 by 1000 one without the note)
        assert "which changes its shape" in prepare_image(encoded(Image.new("RGB", wide))).notes[0]
    assert prepare_image(encoded(Image.new("RGB", (3000, 2000)))).notes == ("resized from 3000×2000 to 2048×1360",)
    with pytest.raises(InvalidImage, match="The mask is 1536×256 but the image is 3072×256"):
        image_source(encoded(panorama), mask=encoded(Image.new("L", (1536, 256), 255)))


def test_outpaint_canvas_keeps_the_original_and_masks_the_new_area() -> None:
    image = Image.new("RGB", (512, 512), (10, 200, 10))
    canvas, mask, note = outpaint_canvas(image, Outpaint(right=256), feather=0)
    assert canvas.size == mask.size == (768, 512)
    assert np.array_equal(np.asarray(canvas)[:, :512], np.asarray(image))
    assert np.asarray(mask)[:, :512].max() == 0 and np.asarray(mask)[:, 512:].min() == 255
    assert note == "canvas extended to 768×512"
    odd, _mask, note = outpaint_canvas(image, Outpaint(left=8, top=7), feather=0)  # not multiples of 16
    assert odd.size == (528, 528) and note.endswith("(each side extended by a multiple of 16 pixels)")
    assert np.array_equal(np.asarray(odd)[16:, 16:], np.asarray(image))  # not stretched: pixel for pixel
    with pytest.raises(InvalidImage, match="at least one side"):
        Outpaint()
    with pytest.raises(InvalidImage, match="left"):
        Outpaint(left=-5)


def test_upscale_for_the_hires_pass() -> None:
    image, note = upscaled(Image.new("RGB", (1024, 1024)), 2.0)
    assert image.size == (2048, 2048) and "2048×2048" in note
    image, note = upscaled(Image.new("RGB", (1536, 1024)), 2.0)
    assert image.size[0] <= 2048 and image.size[0] % 16 == 0 and "the most the model draws" in note
    assert "(the most the model draws is 2048 pixels a side)" in note  # the side bound it, not the pixel count
    with pytest.raises(InvalidImage):
        upscaled(image, 1.0)
    # A hostile pass: a 2048x256 result "upscaled x2 to 2048x256" spent a generation redrawing it at its own size.
    for size in ((2048, 256), (2048, 2048)):
        with pytest.raises(InvalidImage, match=rf"^A {size[0]}×{size[1]} picture is as large as the model draws"):
            upscaled(Image.new("RGB", size), 2.0)


def test_one_default_strength_rule_serves_the_api_and_the_cli(tmp_path, monkeypatch) -> None:
    """No strength given: img2img's default, and 1 with a mask or outpaint (the masked area redrawn from noise), the
    same through the API's fields and the CLI's flags (each used to restate the rule)."""
    from gradio_client import handle_file

    from studio import cli
    from studio.sources import image_source
    from ui.api import image_start

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the API takes only files in Gradio's upload folder
    picture, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (256, 256), (10, 200, 10)).save(picture)
    Image.new("L", (256, 256), 255).save(mask)
    assert image_source(str(picture)).source.strength == DEFAULT_STRENGTH
    assert image_source(str(picture), mask=str(mask)).source.strength == MASKED_STRENGTH
    assert image_source(str(picture), outpaint=Outpaint(left=64)).source.strength == MASKED_STRENGTH
    assert image_source(str(picture), mask=str(mask), strength="0.3").source.strength == 0.3
    upload, with_mask = handle_file(str(picture)), handle_file(str(mask))
    api = [image_start(upload, m, None, o, None, (None, None)).source.strength
           for m, o in ((None, None), (with_mask, None), (None, "64,0,0,0"))]  # fmt: skip
    command = ["generate", "--prompt", "-", "--image", str(picture)]
    flags = [cli.request_of(cli.build_parser().parse_args([*command, *extra]), (1024, 1024))
             for extra in ([], ["--mask", str(mask)], ["--outpaint", "64,0,0,0"])]  # fmt: skip
    expected = [DEFAULT_STRENGTH, MASKED_STRENGTH, MASKED_STRENGTH]
    assert api == expected and [request.source.strength for request in flags] == expected


def test_a_phone_photo_saved_as_mpo_is_taken_as_its_first_picture() -> None:
    """Many phones save photos as MPO: a JPEG with more pictures (previews, depth) after it. Pillow names it MPO, and
    the format check refused it as "a MPO file" until session q; it is its first picture, with no frames note."""
    photo, preview = Image.new("RGB", (320, 256), (200, 30, 30)), Image.new("RGB", (320, 256), (30, 30, 200))
    buffer = io.BytesIO()
    photo.save(buffer, "MPO", save_all=True, append_images=[preview], quality=95)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    prepared = prepare_image(buffer.getvalue())
    assert prepared.notes == () and prepared.image.size == (320, 256)
    red, _, blue = prepared.image.getpixel((10, 10))
    assert red > 180 and blue < 60
