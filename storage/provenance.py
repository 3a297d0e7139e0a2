"""What a PNG says about its origin, for the PNG info tab: its XMP AI disclosure and its C2PA manifest, if any."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .c2pa_manifest import read_c2pa
from .pnginfo import read_text_chunks
from .xmp import PNG_XMP_KEY, TRAINED_ALGORITHMIC_MEDIA, XmpError, parse_xmp, says_ai_generated


def read_provenance(path: str | Path) -> dict[str, Any]:
    """{"ai_generated": bool, "xmp": {...} or None, "c2pa": {...} or None}. Raises PngInfoError for a file that is
    not a readable PNG (as `read_parameters` does); an unreadable XMP packet is reported, not raised."""
    chunks = read_text_chunks(path)
    xmp: dict[str, Any] | None = None
    if PNG_XMP_KEY in chunks:
        try:
            xmp = parse_xmp(chunks[PNG_XMP_KEY])
        except XmpError as error:
            xmp = {"error": str(error)}
    c2pa = read_c2pa(Path(path))
    signed_as_generated = bool(c2pa and c2pa.get("digital_source_type") == TRAINED_ALGORITHMIC_MEDIA)
    generated = (xmp is not None and says_ai_generated(xmp)) or signed_as_generated
    return {"ai_generated": generated, "xmp": xmp, "c2pa": c2pa}
