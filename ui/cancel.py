"""Cancel means cancel, for exactly the job named.

Gradio's `/gradio_api/cancel` (what `gradio_client`'s `Job.cancel()` posts) stops a job only where it can: it cancels
the asyncio task of *every* running job of that session and endpoint (so cancelling a queued job killed the running
one of the same client) and closes the job's generator, while a job that had left the queue in the meantime ran to
the end. This middleware sees each cancel first and hands its event id to the service, which stops that job's
generation at the next step or refuses to start it. It then forwards the request with `fn_index` removed from what
Gradio matches tasks by, so Gradio only drops the job from the queue and closes its stream: for this one event.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024  # a cancel body is ~150 bytes
CANCEL_PATHS = ("/gradio_api/cancel", "/gradio_api/reset")
NO_TASK = -1  # an fn_index no task has: Gradio's task-wide cancel then matches nothing


class CancelRelay:
    def __init__(self, app: ASGIApp, on_cancel: Callable[[str], object]) -> None:
        self.app = app
        self.on_cancel = on_cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith(CANCEL_PATHS):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more and len(body) <= MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = self._relay(body) if not more else body

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}

        if more:  # oversized: not a cancel this relay understands; pass it on untouched
            await self.app(scope, replay, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)

    def _relay(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body  # Gradio answers malformed bodies itself
        if not isinstance(data, dict) or not isinstance(data.get("event_id"), str) or not data["event_id"]:
            return body
        self.on_cancel(data["event_id"])
        return json.dumps({**data, "fn_index": NO_TASK}).encode()
