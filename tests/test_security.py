"""Security probes against the running app (demo checkpoints, loopback only)."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from app_server import AppServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_sources):
    # Uploads capped at 20 MB here (KREA2_MAX_UPLOAD_MB; the default is larger, for LoRA files).
    app = AppServer(tmp_path_factory.mktemp("sec") / "data", Path(demo_sources["turbo"]).parent,
                    {"KREA2_MAX_UPLOAD_MB": "20"}).start()  # fmt: skip
    yield app
    app.stop()


def fetch(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def multipart(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = "krea2boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "path",
    [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=../../../../../../etc/passwd",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/file=/etc/passwd",
        "/gradio_api/file=/proc/self/environ",
    ],
)
def test_path_traversal_is_refused(server, path):
    status, _headers, body = fetch(server.url.rstrip("/") + path)
    assert status in (403, 404)
    assert b"root:" not in body and b"PATH=" not in body


def test_database_files_are_never_served(server):
    for suffix in ("", "-wal", "-shm"):
        db = (server.data_dir / f"history.sqlite3{suffix}").resolve()
        status, _h, body = fetch(server.url + "gradio_api/file=" + urllib.parse.quote(str(db)))
        assert status in (403, 404), suffix
        assert not body.startswith(b"SQLite format")


def test_url_as_file_path_makes_no_outbound_request(server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3)
    port = listener.getsockname()[1]
    hits = []

    def accept():
        try:
            hits.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    for target in (f"http://127.0.0.1:{port}/x.png", f"http%3A//127.0.0.1%3A{port}/x.png"):
        status, _h, _b = fetch(server.url + "gradio_api/file=" + target)
        assert status in (403, 404)
    thread.join()
    listener.close()
    assert hits == []


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"])
def test_cross_origin_posts_are_refused(server, origin):
    join = b'{"data": [], "fn_index": 0, "session_hash": "probe"}'
    status, _h, _b = fetch(server.url + "gradio_api/queue/join", "POST", join,
                           {"Origin": origin, "Content-Type": "application/json"})  # fmt: skip
    assert status == 403
    body, ctype = multipart("a.png", b"x")
    status, _h, _b = fetch(server.url + "gradio_api/upload", "POST", body, {"Origin": origin, "Content-Type": ctype})
    assert status == 403


def test_a_dns_rebinding_page_is_refused_on_a_local_server(server):
    """A page on rebind.attacker.example, its name pointed at 127.0.0.1, sends its own name as Host and Origin: the
    origin check alone let it start generations and read /config (a hostile pass). A local server answers only to
    local names."""
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    foreign = {"Host": f"rebind.attacker.example:{port}", "Origin": f"http://rebind.attacker.example:{port}"}
    join = b'{"data": [], "fn_index": 0, "session_hash": "probe"}'
    assert fetch(server.url + "config", headers={"Host": foreign["Host"]})[0] == 403
    status, _h, _b = fetch(server.url + "gradio_api/queue/join", "POST", join,
                           {**foreign, "Content-Type": "application/json"})  # fmt: skip
    assert status == 403
    assert fetch(server.url + "config", headers={"Host": f"localhost:{port}"})[0] == 200


def test_same_origin_post_is_allowed(server):
    body, ctype = multipart("a.png", b"x")
    origin = server.url.rstrip("/")
    status, _h, _b = fetch(server.url + "gradio_api/upload", "POST", body, {"Origin": origin, "Content-Type": ctype})
    assert status == 200


@pytest.mark.parametrize(
    ("name", "content"),
    [("x.html", b"<html><script>alert(1)</script></html>"),
     ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')],
)  # fmt: skip
def test_html_and_svg_uploads_are_never_rendered(server, name, content):
    body, ctype = multipart(name, content)
    status, _h, payload = fetch(server.url + "gradio_api/upload", "POST", body, {"Content-Type": ctype})
    if status != 200:
        return  # refused outright: fine
    stored = payload.decode().strip('[]"\n ')
    status, headers, _b = fetch(server.url + "gradio_api/file=" + urllib.parse.quote(stored))
    headers = {k.lower(): v for k, v in headers.items()}
    assert status != 200 or (
        "html" not in headers.get("content-type", "") and "svg" not in headers.get("content-type", "")
        and "attachment" in headers.get("content-disposition", "")
    )  # fmt: skip


def test_oversized_upload_is_refused(server):
    body, ctype = multipart("big.png", b"\0" * (21 * 1024 * 1024))
    status, _h, _b = fetch(server.url + "gradio_api/upload", "POST", body, {"Content-Type": ctype})
    assert status == 413


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, demo_sources):
    app = AppServer(tmp_path_factory.mktemp("auth") / "data", Path(demo_sources["turbo"]).parent,
                    {"KREA2_AUTH": "alice:s3cret-pass"})  # fmt: skip
    yield app.start()
    app.stop()


def test_with_auth_nothing_works_without_credentials(auth_server):
    from gradio_client import Client

    for path in ("config", "gradio_api/info", "gradio_api/file=/etc/passwd"):
        status, _h, _body = fetch(auth_server.url + path)
        assert status in (401, 403), path
    join = b'{"data": ["x"], "fn_index": 0, "session_hash": "probe"}'
    status, _h, _b = fetch(
        auth_server.url + "gradio_api/queue/join", "POST", join, {"Content-Type": "application/json"}
    )
    assert status in (401, 403)
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(auth_server.url, verbose=False)
    client = Client(auth_server.url, auth=("alice", "s3cret-pass"), verbose=False)
    assert client.predict(search="", api_name="/history")["total"] == 0


def test_failed_logins_from_one_address_are_throttled():
    """A hostile pass sent twelve wrong passwords in a row, each answered at once, and the right one still worked.
    After LOGIN_FAILURES failures within LOGIN_WINDOW_S one address gets 429 (Retry-After) until the oldest is that
    old; a successful login counts nothing, and other addresses are not held."""
    import asyncio

    from ui.security import LOGIN_FAILURES, LOGIN_WINDOW_S, LoginGuard

    now = [1000.0]
    reached: list[str] = []

    async def gradio(scope, receive, send):  # Gradio's /login: 400 for a wrong password, 200 for alice's
        reached.append(scope["client"][0])
        status = 200 if scope.get("password") == "right" else 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = LoginGuard(gradio, clock=lambda: now[0])

    def login(client: str, password: str = "wrong") -> int:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "POST", "path": "/login", "client": (client, 1), "password": password}
        asyncio.run(guard(scope, receive, send))
        return sent[0]["status"]

    assert [login("10.0.0.1", "right") for _ in range(LOGIN_FAILURES + 2)] == [200] * (LOGIN_FAILURES + 2)
    assert [login("10.0.0.2") for _ in range(LOGIN_FAILURES)] == [400] * LOGIN_FAILURES
    calls = len(reached)
    assert login("10.0.0.2", "right") == 429 and len(reached) == calls  # not even passed on
    assert login("10.0.0.3", "right") == 200  # another address is not held
    now[0] += LOGIN_WINDOW_S + 1
    assert login("10.0.0.2", "right") == 200


def test_a_burst_of_parallel_logins_is_throttled_too_and_only_the_login_route_counts():
    """The review of the throttle: tries counted only when their answer started all passed the check together, and
    any POST ending in /login skipped the login check (it is the exact route now)."""
    import asyncio

    from ui.security import LOGIN_FAILURES, LoginGuard, login_address

    reached = []

    async def slow_gradio(scope, receive, send):  # the form is read in a thread pool: others get in meanwhile
        reached.append(scope["path"])
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = LoginGuard(slow_gradio)

    async def login(client: str = "10.0.0.9") -> int:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        await guard({"type": "http", "method": "POST", "path": "/login", "client": (client, 1)}, receive, send)
        return sent[0]["status"]

    async def burst():
        return await asyncio.gather(*(login() for _ in range(3 * LOGIN_FAILURES)))

    statuses = asyncio.run(burst())
    assert statuses.count(400) == LOGIN_FAILURES and statuses.count(429) == 2 * LOGIN_FAILURES
    assert len(reached) == LOGIN_FAILURES
    for path in ("/gradio_api/call/login", "/x/login", "/login/extra"):
        assert not LoginGuard.is_login({"type": "http", "method": "POST", "path": path})
    assert LoginGuard.is_login({"type": "http", "method": "POST", "path": "/app/login", "root_path": "/app"})
    a, b = ({"client": (f"2001:db8::{n}", 1)} for n in (1, 2))
    assert login_address(a) == login_address(b) == "2001:db8::/64"
