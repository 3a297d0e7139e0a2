"""Generation parameters inside PNGs: an A1111-style `parameters` text chunk plus a JSON chunk with the full request.

`read_parameters` reads either from any PNG (also ones written by other tools in the A1111 layout), from the text
chunks alone: no pixel is ever decoded, so an upload costs what its text costs.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from PIL import PngImagePlugin

from .xmp import PNG_XMP_KEY, XmpError, parse_xmp, says_ai_generated, xmp_packet

PARAMETERS_KEY = "parameters"
JSON_KEY = "krea2"
DEFAULT_CREATOR_TOOL = "Krea 2 Studio"  # the XMP's CreatorTool when the parameters name no app
SAMPLER = "Euler (flow matching)"


class PngInfoError(ValueError):
    """The file is not a readable PNG, or carries no generation parameters."""


# LoRAs as A1111 and Forge write them, so Civitai and other tools read them: `<lora:name:weight>` in the prompt, and
# `Lora hashes: "name: hash, ..."` (each file's AutoV3, 12 hex digits) among the settings.
LORA_TAG = re.compile(r"<(?:lora|lyco):([^:<>]+):([^:<>]+)(?::[^<>]*)?>")


def lora_tags(loras: list[dict[str, Any]]) -> str:
    return " ".join(f"<lora:{lora['name']}:{float(lora['weight']):g}>" for lora in loras)


def lora_hashes(loras: list[dict[str, Any]]) -> str:
    """The `Lora hashes` value; A1111 drops `:` and `,` from names there (ours hold neither)."""
    return ", ".join(f"{re.sub('[:,]', '', lora['name'])}: {lora['hash']}" for lora in loras if lora.get("hash"))


def format_parameters(params: dict[str, Any]) -> str:
    """A1111 layout: prompt line(s), `Negative prompt: ...`, then one `Key: value, ...` line."""
    loras = params.get("loras") or []
    lines = [" ".join(filter(None, [params["prompt"], lora_tags(loras)]))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [
        ("Steps", params["steps"]),
        ("Sampler", SAMPLER),
        ("CFG scale", params["guidance"]),
        ("Seed", params["seed"]),
        ("Size", f"{params['width']}x{params['height']}"),
        ("Model", params["model"]),
    ]
    if hashes := lora_hashes(loras):
        fields.append(("Lora hashes", f'"{hashes}"'))
    if params.get("strength") is not None:  # started from an image: A1111's key, and the image's content address
        fields.append(("Denoising strength", params["strength"]))
        fields.append(("Init image hash", str(params.get("source_sha256", ""))[:10]))
        if params.get("mask_sha256"):
            fields.append(("Mask hash", params["mask_sha256"][:10]))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def build_pnginfo(params: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PARAMETERS_KEY, format_parameters(params))
    info.add_itxt(JSON_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True))
    # AI disclosure (storage/xmp.py): uncompressed, as XMP readers expect it.
    info.add_itxt(PNG_XMP_KEY, xmp_packet(str(params.get("app") or DEFAULT_CREATOR_TOOL)))
    return info


def undisclosed(image: PILImage.Image) -> PngImagePlugin.PngInfo | None:
    """For a PNG made elsewhere (an imported one): None when its XMP says it is AI-generated, else its own text chunks
    with this app's XMP disclosure added, to encode it again with (its pixels unchanged)."""
    text = dict(getattr(image, "text", {}) or {})
    try:
        if PNG_XMP_KEY in text and says_ai_generated(parse_xmp(text[PNG_XMP_KEY])):
            return None
    except XmpError:
        pass
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if key != PNG_XMP_KEY:
            info.add_itxt(key, value)
    params = {}
    try:
        params = json.loads(text.get(JSON_KEY, "{}"))
    except ValueError:
        pass
    creator = params.get("app") if isinstance(params, dict) else None
    info.add_itxt(PNG_XMP_KEY, xmp_packet(str(creator or DEFAULT_CREATOR_TOOL)))
    return info


_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse A1111 `parameters` text into prompt, negative_prompt and the key/value fields."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and re.search(r"(^|, )Steps: ", lines[-1]) else ""
    prompt_lines, negative_lines, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if target is negative_lines else prompt_lines).append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative_lines)}
    for key, value in _FIELD.findall(settings_line):
        result[key.strip()] = value.strip().strip('"')
    normalised = {
        "Steps": ("steps", int),
        "CFG scale": ("guidance", float),
        "Seed": ("seed", int),
        "Denoising strength": ("strength", float),
    }
    for key, (name, cast) in normalised.items():
        if key in result:
            try:
                result[name] = cast(result[key])
            except ValueError:
                pass
    if "Size" in result and re.fullmatch(r"\d+x\d+", result["Size"]):
        result["width"], result["height"] = (int(v) for v in result["Size"].split("x"))
    result["prompt"], result["loras"] = split_lora_tags(result["prompt"], result.get("Lora hashes", ""))
    return result


def split_lora_tags(prompt: str, hashes: str = "") -> tuple[str, list[dict[str, Any]]]:
    """A prompt's `<lora:name:weight>` tags taken out of it, as LoRAs (with their hash from `Lora hashes`, where it
    names them), and the prompt without them."""
    known = {}
    for part in hashes.split(","):
        name, sep, digest = part.partition(":")
        if sep and re.fullmatch(r"[0-9a-fA-F]{10,64}", digest.strip()):
            known[name.strip()] = digest.strip().lower()
    loras = []
    for name, weight in LORA_TAG.findall(prompt):
        try:
            value = float(weight)
        except ValueError:
            continue
        if math.isfinite(value):
            loras.append({"name": name.strip(), "weight": value, "hash": known.get(name.strip(), "")})
    text = LORA_TAG.sub(" ", prompt)
    text = re.sub(r"[ \t]*,(?:[ \t]*,)+", ",", text)  # the commas around a tag taken out
    text = "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip(" \t,") for line in text.split("\n"))
    return text.strip(), loras


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 1024 * 1024  # per text chunk, after decompression: generation parameters are a few KB
MAX_TEXT_TOTAL = 4 * MAX_TEXT_BYTES
MAX_JSON_INT = 2**53  # beyond this an integer is not a parameter of ours (and JSON clients cannot hold it)


def _inflate(data: bytes, what: str) -> bytes:
    """zlib-decompress at most MAX_TEXT_BYTES: a compressed text chunk can expand a thousandfold (a text bomb)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error as error:
        raise PngInfoError(f"Not a readable PNG (its {what} text chunk is corrupt).") from error
    if len(out) > MAX_TEXT_BYTES or inflater.unconsumed_tail:
        raise PngInfoError(f"This PNG's {what} text chunk is too large (over 1 MB uncompressed); it was not read.")
    return out


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk (PNG spec 11.3.4), or None for a kind we skip."""
    keyword, sep, rest = data.partition(b"\0")
    if not sep:
        raise PngInfoError("Not a readable PNG (a text chunk has no keyword).")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:], name).decode("latin-1")
    compressed, _method = rest[:1] == b"\1", rest[1:2]
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    raw = _inflate(text, name) if compressed else text
    return name, raw.decode("utf-8", errors="replace")


def read_text_chunks(source) -> dict[str, str]:
    """Every text chunk of a PNG, read chunk by chunk without decoding a single pixel: the cost is the file's text,
    whatever its width and height (a 13000x13000 upload used to cost 640 MB of decoded pixels). Checks the structure
    a decoder would (signature, IHDR first, chunk CRCs, IEND), so a truncated or corrupt file is still refused."""
    handle = open(source, "rb") if isinstance(source, (str, Path)) else source
    try:
        if handle.read(8) != PNG_SIGNATURE:
            raise PngInfoError("This is not a PNG file.")
        texts: dict[str, str] = {}
        total, first = 0, True
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise PngInfoError("Not a readable PNG (the file is truncated).")
            length, kind = struct.unpack(">I4s", head)
            if first and kind != b"IHDR":
                raise PngInfoError("Not a readable PNG (no image header).")
            first = False
            if length > 2**31 - 1 or not kind.isalpha():
                raise PngInfoError("Not a readable PNG (a chunk is malformed).")
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                if length > MAX_TEXT_TOTAL:
                    raise PngInfoError("This PNG's text is too large (over 4 MB); it was not read.")
                data = handle.read(length)
                crc = handle.read(4)
                if len(data) < length or len(crc) < 4:
                    raise PngInfoError("Not a readable PNG (the file is truncated).")
                if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
                    raise PngInfoError("Not a readable PNG (a text chunk is corrupt).")
                name, text = _text_chunk(kind, data)
                total += len(text)
                if total > MAX_TEXT_TOTAL:
                    raise PngInfoError("This PNG's text is too large (over 4 MB); it was not read.")
                texts.setdefault(name, text)
            elif kind == b"IEND":
                return texts
            else:  # pixels and everything else: skipped, never decompressed (a cut-off file fails at the next read)
                handle.seek(length + 4, io.SEEK_CUR)
    finally:
        if handle is not source:
            handle.close()


def _bounded(value: Any) -> Any:
    """JSON from a foreign PNG made safe to show and send on: integers beyond 2**53 and non-finite numbers become
    text (Gradio's JSON encoder refuses integers beyond 64 bits and NaN)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_JSON_INT else "a number too large to show"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return [_bounded(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _bounded(item) for key, item in value.items()}
    return str(value)


def read_parameters(path_or_file) -> dict[str, Any]:
    """{'parameters': text or None, 'parsed': dict, 'request': dict or None} from a PNG file."""
    try:
        text_chunks = read_text_chunks(path_or_file)
    except OSError as error:
        raise PngInfoError(f"Not a readable PNG ({error.strerror or type(error).__name__}).") from error
    parameters = text_chunks.get(PARAMETERS_KEY)
    request = None
    if JSON_KEY in text_chunks:
        try:
            request = _bounded(json.loads(text_chunks[JSON_KEY]))
        except (ValueError, RecursionError):  # malformed, a 5000-digit integer, nesting too deep
            request = None
        if not isinstance(request, dict):
            request = None
    if parameters is None and request is None:
        raise PngInfoError("This PNG carries no generation parameters.")
    parsed = parse_parameters(parameters) if parameters else {}
    return {"parameters": parameters, "parsed": parsed, "request": request}
