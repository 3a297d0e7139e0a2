"""Request guards, as ASGI middleware in front of every route Gradio serves.

Same-origin guard: state-changing requests from another site (or from `Origin: null`) are refused. On a server only
this machine can reach, a request naming another host is refused too, whatever its method: a DNS-rebinding page
(its own name pointed at 127.0.0.1) sends Origin and Host alike, so the origin check alone let it drive and read the
app.

CORS only stops a browser from *reading* a cross-origin response; the request itself still runs. A page on another
site could otherwise start generations or delete history through a user's open session. Requests without an Origin
header (gradio_client, curl) are not browser cross-site requests and pass; auth, when on, still applies to them.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studio.safety import is_loopback

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# With auth on, what a browser without a login may fetch: the login page (Gradio serves it at "/" to anyone not
# logged in), the form's POST, and the static files that page loads (checked in Chromium: nothing else). Plus
# Gradio's own start-up call, which `launch()` makes without credentials and fails on anything but 200: it runs the
# app's start-up events once, before the server is announced, and afterwards only answers `false`.
PUBLIC_PATHS = {"/", "/login", "/login/", "/theme.css", "/favicon.ico", "/gradio_api/startup-events"}
PUBLIC_PREFIXES = ("/assets/", "/static/")
LOGIN_FAILURES, LOGIN_WINDOW_S = 10, 300.0  # failed logins one address may make in the window before a 429
MAX_TRACKED_ADDRESSES = 1024  # past this many addresses with failures, the stale ones are dropped


class SameOriginGuard:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = (), local_only: bool = False) -> None:
        """`local_only`: the app binds a loopback address and no allowed origin is public (studio.safety's
        `reachable_from` is None): requests must name a loopback host. A reverse proxy or tunnel that passes its
        public name on is named in KREA2_ALLOWED_ORIGINS, which makes the app reachable and lifts this check."""
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed_origins}
        self.local_only = local_only

    def _foreign_host(self, scope: Scope) -> bool:
        if not self.local_only:
            return False
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        name = urlsplit(f"//{host}").hostname if host else None
        return name is not None and not is_loopback(name)

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
        if scope["type"] in ("http", "websocket") and self._foreign_host(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            refusal = (
                "This server answers only under a local name such as localhost or 127.0.0.1. Behind a proxy or "
                "tunnel that passes its own name, set KREA2_ALLOWED_ORIGINS=https://that.name."
            )
            await PlainTextResponse(refusal, status_code=403)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and self._refused(scope):
            await PlainTextResponse("Cross-origin request refused.", status_code=403)(scope, receive, send)
            return
        if scope["type"] == "websocket" and self._refused(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


def app_path(scope: Scope) -> str:
    """The request's path below the app's root path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def login_address(scope: Scope) -> str:
    """Who a login try counts against: the client's address, an IPv6 one by its /64 (a host may hold a whole /64)."""
    address = (scope.get("client") or ("?", 0))[0]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else address


class LoginGuard:
    """With `auth` on, every route needs the login except PUBLIC_PATHS/PUBLIC_PREFIXES: one check in front of all
    routes, instead of Gradio's per-route dependencies, which several routes lack (`/gradio_api/cancel`, `/reset`,
    `/openapi.json`, `/gradio_api/heartbeat/*`, `/gradio_api/token`...), as would any route a future Gradio adds.

    It reads the login the way Gradio issues it: the `access-token` cookie of `POST /login`, looked up in the
    app's tokens (the Gradio app is `scope["app"]`, set by Starlette before the middleware runs)."""

    def __init__(self, app: ASGIApp, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self.failures: dict[str, collections.deque[float]] = {}  # client address -> times of its failed logins

    @staticmethod
    def is_login(scope: Scope) -> bool:
        """Gradio's `POST /login`, exactly (below the root path): any other route still needs the login."""
        return scope["type"] == "http" and scope.get("method") == "POST" and app_path(scope) in ("/login", "/login/")

    async def throttled_login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login answers wrong passwords at once and without end (a hostile pass tried twelve in a row):
        after LOGIN_FAILURES failed tries from one address within LOGIN_WINDOW_S, it answers 429 until the oldest
        is that old. Each try counts from its arrival, and is taken back when it did not fail: counted at the answer,
        a burst of parallel tries all passed the check (review). IPv6 addresses count by their /64."""
        client, now = login_address(scope), self.clock()
        self.forget_old(now)
        recent = self.failures.setdefault(client, collections.deque())
        while recent and now - recent[0] > LOGIN_WINDOW_S:
            recent.popleft()
        if len(recent) >= LOGIN_FAILURES:
            wait = int(LOGIN_WINDOW_S - (now - recent[0])) + 1
            message = f"Too many failed logins from this address; try again in {wait} s."
            await PlainTextResponse(message, status_code=429, headers={"Retry-After": str(wait)})(scope, receive, send)
            return
        recent.append(now)
        failed = True  # an answer never started (the app raised) counts as a failure

        async def noting_the_answer(message: Message) -> None:
            nonlocal failed
            if message["type"] == "http.response.start":
                failed = message["status"] in (400, 401)
            await send(message)

        try:
            await self.app(scope, receive, noting_the_answer)
        finally:
            entry = self.failures.get(client)
            if not failed and entry is not None and now in entry:
                entry.remove(now)
            if entry is not None and not entry:
                self.failures.pop(client, None)

    def forget_old(self, now: float) -> None:
        """Addresses whose last failure is older than the window are dropped, so the table does not only grow (an
        attacker rotating addresses would grow it without end)."""
        if len(self.failures) > MAX_TRACKED_ADDRESSES:
            for client in [c for c, times in self.failures.items() if not times or now - times[-1] > LOGIN_WINDOW_S]:
                del self.failures[client]

    @staticmethod
    def logged_in(scope: Scope) -> bool:
        gradio_app = scope.get("app")
        if getattr(gradio_app, "auth", None) is None:
            return True  # auth off: nothing to guard
        cookie_id = gradio_app.cookie_id
        cookies: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            if key.lower() == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    name, _, content = part.strip().partition("=")
                    cookies.setdefault(name, content)
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return token is not None and token in gradio_app.tokens

    @staticmethod
    def public(scope: Scope) -> bool:
        path = app_path(scope)
        return scope["type"] == "http" and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.is_login(scope):
            await self.throttled_login(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket") or self.public(scope) or self.logged_in(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)
