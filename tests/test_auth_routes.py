"""With KREA2_AUTH set, every route of the running app refuses a caller without the login, except the login page and
the static files it needs. The routes are enumerated from the live FastAPI app, so one a future Gradio adds is
checked too."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from pathlib import Path

import pytest
from app_server import free_port
from starlette.routing import Mount, Route, WebSocketRoute

from ui.security import PUBLIC_PATHS, PUBLIC_PREFIXES

USER, PASSWORD = "alice", "s3cret-pass"


@pytest.fixture(scope="module")
def running(tmp_path_factory, demo_sources):
    import app

    port = free_port()
    data = tmp_path_factory.mktemp("auth-routes") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KREA2_AUTH", f"{USER}:{PASSWORD}")
        patch.setenv("KREA2_DEMO_CHECKPOINTS", str(Path(demo_sources["turbo"]).parent))
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        blocks, launch = app.build_app(app.read_settings(["--demo", "--port", str(port), "--data-dir", str(data)]))
        blocks.launch(**launch, prevent_thread_lock=True, quiet=True)
        try:
            yield blocks, port
        finally:
            blocks.close()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def flatten(routes) -> list[tuple[str, object]]:
    """(full path, route) for every route, looking inside included routers (FastAPI keeps them as one entry)."""
    found = []
    for route in routes:
        if hasattr(route, "effective_candidates"):  # fastapi's _IncludedRouter
            contexts = list(route.effective_candidates())
            if callable(getattr(route, "effective_low_priority_routes", None)):
                contexts += list(route.effective_low_priority_routes())
            found.extend((context.path, context.original_route) for context in contexts)
        else:
            found.append((getattr(route, "path", None), route))
    return found


def routes(app) -> list[tuple[str, str]]:
    """(method, path) for every route, mount and websocket of the app. A route of a kind this does not know fails the
    test rather than going unchecked."""
    from fastapi.routing import APIWebSocketRoute

    found = []
    for path, route in flatten(app.routes):
        assert path is not None, f"a route without a path: {route!r}"
        if isinstance(route, (WebSocketRoute, APIWebSocketRoute)):
            found.append(("WEBSOCKET", concrete(path)))
        elif isinstance(route, Mount):
            found.append(("GET", concrete(path).rstrip("/") + "/x"))
        elif isinstance(route, Route):
            found.extend((method, concrete(path)) for method in sorted(route.methods or {"GET"}))
        else:
            raise AssertionError(f"unknown kind of route {type(route).__name__} at {path}")
    return found


def request(port: int, method: str, path: str, cookie: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    if method == "WEBSOCKET":
        headers.update({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})  # fmt: skip
        method = "GET"
    body = json.dumps({"fn_index": 0, "session_hash": "probe", "event_id": "probe", "data": []})
    connection.request(method, path, body if method not in ("GET", "HEAD") else None, headers)
    status = connection.getresponse().status
    connection.close()
    return status


def public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def login_cookie(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    form = urllib.parse.urlencode({"username": USER, "password": PASSWORD})
    connection.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    cookies = [v.split(";")[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    assert response.status == 200 and cookies
    return "; ".join(cookies)


def test_every_route_needs_the_login_except_the_login_page(running):
    blocks, port = running
    checked, leaks = routes(blocks.server_app), []
    assert len(checked) > 40  # really the whole app, not an empty list
    for method, path in checked:
        if public(path):
            continue
        status = request(port, method, path)
        if status not in (401, 403):
            leaks.append(f"{method} {path} -> {status}")
    assert leaks == []


def test_the_public_paths_are_the_login_page_and_its_assets(running):
    _blocks, port = running
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    page = connection.getresponse().read()
    assert b"auth_required" in page  # the login page, not the app
    assert request(port, "GET", "/gradio_api/startup-events") == 200  # Gradio's own one-shot start-up call


def test_with_the_login_the_same_routes_answer(running):
    _blocks, port = running
    cookie = login_cookie(port)
    for path in ("/config", "/gradio_api/info", "/openapi.json"):
        assert request(port, "GET", path, cookie) == 200, path


def test_an_unauthenticated_cancel_does_not_reach_the_service(running):
    blocks, port = running
    [service] = [m.kwargs["on_cancel"].__self__ for m in blocks.server_app.user_middleware if "on_cancel" in m.kwargs]
    assert request(port, "POST", "/gradio_api/cancel") == 401
    assert "probe" not in service._cancelled_jobs
    request(port, "POST", "/gradio_api/cancel", login_cookie(port))
    assert "probe" in service._cancelled_jobs  # the same call with the login does reach it
