"""The one filter for user-supplied text shown on the page (prompts, negative prompts, PNG text, file names, error
reasons that quote a value).

Gradio renders Markdown and HTML components, and its error toasts, as HTML (sanitised, but a sanitiser keeps
`<img src=...>`, so a prompt could make every viewer's browser fetch a URL). User text therefore only ever reaches the
page through `as_text`: HTML-escaped, so the browser shows each character as typed and parses no tag, entity,
attribute or link out of it. It goes into HTML components only (never Markdown, whose `![](url)`, autolinks and
LaTeX would act on text that contains no `<` at all).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any


def as_text(value: Any) -> str:
    """`value` as HTML that displays exactly its characters: `& < > " '` become entities; newlines stay (CSS shows
    them where wanted)."""
    return html.escape(str(value), quote=True)


MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()!|~#])")


def shown(value: Any) -> str:
    """`value` for a Markdown component (a note, the progress line: a LoRA name, an error quoting a path) that displays
    exactly its characters: Markdown's specials escaped (no link, image, emphasis or heading), then `as_text`'s. In that
    order: the other way round, the `#` of `&#x27;` got a backslash and a quote showed as its entity."""
    return as_text(MARKDOWN_SPECIALS.sub(r"\\\1", str(value)))


def table(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column HTML table of (label, value); both are passed through `as_text`."""
    body = "".join(f"<tr><th>{as_text(key)}</th><td>{as_text(value)}</td></tr>" for key, value in rows)
    return f'<table class="krea2-details">{body}</table>'
