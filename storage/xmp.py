"""AI disclosure inside every image file: an XMP packet saying the picture was made by a trained model.

IPTC's `DigitalSourceType` term `trainedAlgorithmicMedia` is what exiftool, Google, Meta and the other major platforms
read as "AI generated" (IPTC Photo Metadata, Digital Source Type vocabulary). In a PNG the packet is the uncompressed
iTXt chunk `XML:com.adobe.xmp` (XMP Specification Part 3); in a WebP thumbnail, its XMP chunk.

`parse_xmp` reads a packet back with defusedxml: the packet of an uploaded PNG is someone else's XML (no entities, no
DTD, no external references are resolved).
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element  # a type only; parsing goes through defusedxml

PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword XMP readers look for in a PNG
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
}
# What `parse_xmp` reports, by (namespace prefix, property).
PROPERTIES = {"DigitalSourceType": ("Iptc4xmpExt", "DigitalSourceType"), "CreatorTool": ("xmp", "CreatorTool")}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def xmp_packet(creator_tool: str) -> str:
    """The XMP packet of a generated image: IPTC DigitalSourceType = trainedAlgorithmicMedia, and the tool that made
    it (`xmp:CreatorTool`)."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NAMESPACES["x"]}">\n'
        f' <rdf:RDF xmlns:rdf="{NAMESPACES["rdf"]}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{NAMESPACES["Iptc4xmpExt"]}"\n'
        f'    xmlns:xmp="{NAMESPACES["xmp"]}">\n'
        f"   <Iptc4xmpExt:DigitalSourceType>{TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>\n"
        f"   <xmp:CreatorTool>{_escape(creator_tool)}</xmp:CreatorTool>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


class XmpError(ValueError):
    """The packet is not readable XML (or is XML that defusedxml refuses: entities, a DTD)."""


def parse_xmp(packet: str) -> dict[str, Any]:
    """The properties of PROPERTIES found in a packet, written either as elements or as attributes of an
    rdf:Description (both are valid XMP), e.g. {"DigitalSourceType": "http://cv.iptc.org/...", "CreatorTool": "..."}.
    Raises XmpError for a packet that is not XML."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    body = packet.strip().lstrip("\ufeff")
    try:
        root: Element = fromstring(body.encode("utf-8"))
    except (ParseError, DefusedXmlException, ValueError) as error:
        raise XmpError(f"The XMP packet is not readable ({type(error).__name__}).") from error
    found: dict[str, Any] = {}
    for description in root.iter(f"{{{NAMESPACES['rdf']}}}Description"):
        for name, (prefix, prop) in PROPERTIES.items():
            tag = f"{{{NAMESPACES[prefix]}}}{prop}"
            value = description.get(tag)
            if value is None and (element := description.find(tag)) is not None:
                value = (element.text or "").strip()
            if value is not None and name not in found:
                found[name] = value
    return found


def says_ai_generated(properties: dict[str, Any]) -> bool:
    return properties.get("DigitalSourceType") == TRAINED_ALGORITHMIC_MEDIA
