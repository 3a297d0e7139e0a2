"""Raw HTTP calls to the app's named endpoints: what any client (not only gradio_client) can send."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path


def call(base_url: str, api: str, body: bytes | str, timeout: float = 120) -> tuple[str, object]:
    """POST a raw JSON body to /gradio_api/call/<api> and read the result stream: ("complete", data),
    ("error", message) or ("http", status) when the request itself is refused."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        f"{base_url}gradio_api/call/{api}", data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            event_id = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:
        return "http", error.code
    with urllib.request.urlopen(f"{base_url}gradio_api/call/{api}/{event_id}", timeout=timeout) as response:
        kind, payload = None, None
        for raw in response:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = json.loads(line[len("data: ") :])
                break
    if kind == "error":
        return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
    return kind or "none", payload


def one_sentence(message: object) -> bool:
    """A message for people: a short single line, no traceback, not Gradio's generic text."""
    return (
        isinstance(message, str)
        and 0 < len(message) < 400
        and "\n" not in message
        and "Traceback" not in message
        and "upstream Gradio app" not in message
    )


def files_in(data_dir: Path) -> set[Path]:
    return {p for top in ("images", "thumbs") for p in (data_dir / top).rglob("*") if p.is_file()}
