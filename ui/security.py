"""Same-origin guard: state-changing requests from another site (or from `Origin: null`) are refused.

CORS only stops a browser from *reading* a cross-origin response; the request itself still runs. A page on another
site could otherwise start generations or delete history through a user's open session. Requests without an Origin
header (gradio_client, curl) are not browser cross-site requests and pass; auth, when on, still applies to them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def allowed_origins_from_env() -> list[str]:
    """Extra origins (e.g. a reverse proxy's public URL) from KREA2_ALLOWED_ORIGINS, comma separated."""
    return [o.strip().rstrip("/") for o in os.environ.get("KREA2_ALLOWED_ORIGINS", "").split(",") if o.strip()]


class SameOriginGuard:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed_origins}

    def _refused(self, scope: Scope) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is None:
            return False
        if origin == "null":
            return True
        hosts = {headers.get("host", ""), *headers.get("x-forwarded-host", "").split(",")}
        return urlsplit(origin).netloc not in {h.strip() for h in hosts if h} and origin.rstrip("/") not in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and self._refused(scope):
            await PlainTextResponse("Cross-origin request refused.", status_code=403)(scope, receive, send)
            return
        if scope["type"] == "websocket" and self._refused(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)
