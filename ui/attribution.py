"""The notice the Krea 2 Community License asks of whoever makes the model available (section 3.1 c: the attribution
notice, word for word; the NOTICE file and the README carry the same text), shown at the foot of every page with the
AI disclosure (section 4.3)."""

from __future__ import annotations

LICENSE_URL = "https://krea.ai/krea-2-licensing"
NOTICE = (
    "Krea 2 is licensed under the Krea 2 Community License Agreement. For more information, visit "
    "https://krea.ai/krea-2-licensing."
)
LINK = f'<a href="{LICENSE_URL}" target="_blank" rel="noopener">{LICENSE_URL}</a>'
FOOTER_HTML = (
    '<div id="krea2-attribution">'
    f"<strong>Built with Krea 2</strong> · {NOTICE.replace(LICENSE_URL, LINK)}"
    " · Images here are AI-generated, and each PNG says so in its metadata (IPTC DigitalSourceType)."
    "</div>"
)
