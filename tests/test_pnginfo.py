"""PNG info reads text chunks only: its cost never depends on the pixel count, and hostile chunks get a sentence."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from storage.pnginfo import PngInfoError, read_parameters

ROOT = Path(__file__).resolve().parents[1]
PARAMS = "a fox\nSteps: 8, Sampler: Euler, CFG scale: 0.0, Seed: 7, Size: 1024x1024, Model: Krea 2 Turbo"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *texts: bytes, pixels: bool = True) -> bytes:
    """A valid RGB PNG of any size, cheap to build: its rows are all zeros, so the IDAT compresses ~1000:1."""
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    out += b"".join(texts)
    if pixels:
        compressor, row = zlib.compressobj(9), b"\0" * (width * 3 + 1)
        data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
        out += chunk(b"IDAT", data)
    return out + chunk(b"IEND", b"")


def text(key: str, value: str) -> bytes:
    return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


MEASURE = """
import resource, sys
sys.path.insert(0, {root!r})
from storage.pnginfo import read_parameters
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = read_parameters({path!r})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert info["parsed"]["prompt"] == "a fox", info
print((after - before) // 1024)
"""


def test_a_huge_image_costs_no_pixel_memory(tmp_path):
    """13000x13000 pixels (~500 KB on disk, 507 MB decoded): reading its text must not decode them."""
    path = tmp_path / "huge.png"
    path.write_bytes(png(13000, 13000, text("parameters", PARAMS)))
    assert path.stat().st_size < 1_000_000
    script = MEASURE.format(root=str(ROOT), path=str(path))
    grown_mb = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 50, f"reading the text chunks grew the process by {grown_mb} MB"


def test_a_decompression_bomb_is_read_for_its_text_not_decoded(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png(40000, 40000, text("parameters", PARAMS), pixels=False))  # Pillow refuses > 179 M pixels
    assert read_parameters(path)["parsed"]["seed"] == 7


def test_a_compressed_text_bomb_gets_a_sentence(tmp_path):
    bomb = zlib.compress(b"a" * (64 * 1024 * 1024), 9)  # 64 MB of text in ~65 KB
    path = tmp_path / "ztxt.png"
    path.write_bytes(png(8, 8, chunk(b"zTXt", b"parameters\0\0" + bomb)))
    with pytest.raises(PngInfoError, match="too large"):
        read_parameters(path)


def test_huge_numbers_in_the_json_chunk_stay_showable(tmp_path):
    payload = '{{"prompt": "a fox", "seed": {}, "steps": 1e400, "nested": [{}]}}'.format("9" * 400, "1" * 4000)
    path = tmp_path / "json.png"
    path.write_bytes(png(8, 8, chunk(b"iTXt", b"krea2\0\0\0\0\0" + payload.encode())))
    request = read_parameters(path)["request"]
    assert request["prompt"] == "a fox"
    json.dumps(request, allow_nan=False)  # what Gradio sends on must be plain JSON
    import orjson

    orjson.dumps(request)  # Gradio's own encoder: refuses ints beyond 64 bits


def test_json_chunk_beyond_int_digit_limit_is_ignored_not_a_crash(tmp_path):
    payload = '{"seed": %s}' % ("9" * 5000)  # over Python's 4300-digit int parsing limit
    path = tmp_path / "digits.png"
    path.write_bytes(png(8, 8, text("parameters", PARAMS), chunk(b"iTXt", b"krea2\0\0\0\0\0" + payload.encode())))
    info = read_parameters(path)
    assert info["request"] is None and info["parsed"]["prompt"] == "a fox"


def test_a_corrupt_text_chunk_is_refused(tmp_path):
    good = text("parameters", PARAMS)
    bad = good[:-1] + bytes([good[-1] ^ 1])  # CRC off by one bit
    path = tmp_path / "crc.png"
    path.write_bytes(png(8, 8, bad))
    with pytest.raises(PngInfoError, match="corrupt"):
        read_parameters(path)


def test_pillow_written_pngs_still_read(tmp_path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PARAMS, zip=True)  # zTXt
    info.add_itxt("krea2", json.dumps({"prompt": "a fox", "seed": 7}), zip=True)  # compressed iTXt
    path = tmp_path / "pillow.png"
    Image.new("RGB", (32, 32)).save(path, pnginfo=info)
    result = read_parameters(path)
    assert result["parsed"]["seed"] == 7 and result["request"] == {"prompt": "a fox", "seed": 7}
