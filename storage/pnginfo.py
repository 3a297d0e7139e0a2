"""Generation parameters inside PNGs: an A1111-style `parameters` text chunk plus a JSON chunk with the full request.

`read_parameters` reads either from any PNG (also ones written by other tools in the A1111 layout).
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

PARAMETERS_KEY = "parameters"
JSON_KEY = "krea2"
SAMPLER = "Euler (flow matching)"


class PngInfoError(ValueError):
    """The file is not a readable PNG, or carries no generation parameters."""


def format_parameters(params: dict[str, Any]) -> str:
    """A1111 layout: prompt line(s), `Negative prompt: ...`, then one `Key: value, ...` line."""
    lines = [params["prompt"]]
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
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def build_pnginfo(params: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PARAMETERS_KEY, format_parameters(params))
    info.add_itxt(JSON_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True))
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
    normalised = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int)}
    for key, (name, cast) in normalised.items():
        if key in result:
            try:
                result[name] = cast(result[key])
            except ValueError:
                pass
    if "Size" in result and re.fullmatch(r"\d+x\d+", result["Size"]):
        result["width"], result["height"] = (int(v) for v in result["Size"].split("x"))
    return result


def read_parameters(path_or_file) -> dict[str, Any]:
    """{'parameters': text or None, 'parsed': dict, 'request': dict or None} from a PNG file."""
    try:
        with Image.open(path_or_file) as image:
            if image.format != "PNG":
                raise PngInfoError(f"This is a {image.format or 'non-PNG'} file, not a PNG.")
            image.load()  # reads through the data: a truncated file fails here
            text_chunks = dict(getattr(image, "text", {}) or {})
    except PngInfoError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PngInfoError(f"Not a readable PNG ({type(error).__name__}).") from error
    parameters = text_chunks.get(PARAMETERS_KEY)
    request = None
    if JSON_KEY in text_chunks:
        try:
            request = json.loads(text_chunks[JSON_KEY])
        except json.JSONDecodeError:
            request = None
    if parameters is None and request is None:
        raise PngInfoError("This PNG carries no generation parameters.")
    parsed = parse_parameters(parameters) if parameters else {}
    return {"parameters": parameters, "parsed": parsed, "request": request}
