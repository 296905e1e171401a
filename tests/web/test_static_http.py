"""The browser client's files on the HTTP port: the whitelist, content types, safety headers,
and what happens to every other request."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
import trio
import trio.testing

from papaya_trio.transports.static import ROUTES, StaticSite
from tests.web.ws_world import open_web_world

CLIENT_FILES = sorted(set(ROUTES.values()))


@pytest.mark.parametrize(
    ("target", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/index.html", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/?user=alice", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/app.js", "text/javascript; charset=utf-8", b"WebSocket"),
        ("/style.css", "text/css; charset=utf-8", b"prefers-color-scheme"),
        ("/favicon.svg", "image/svg+xml", b"<svg"),
        ("/server.json", "application/json", b"max_message_bytes"),
    ],
)
async def test_the_client_files_are_served(
    autojump_clock: trio.testing.MockClock, target: str, content_type: str, marker: bytes
) -> None:
    async with open_web_world() as world:
        answer = await world.get(target)
        assert answer.status == 200
        assert answer.headers["content-type"] == content_type
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert marker in answer.body
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["connection"] == "close"


async def test_server_json_tells_the_page_the_text_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world(max_message_bytes=777) as world:
        answer = await world.get("/server.json")
        assert json.loads(answer.body) == {"max_message_bytes": 777}


async def test_head_has_headers_and_no_body(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        full = await world.get("/app.js")
        head = await world.get("/app.js", "HEAD")
        assert head.status == 200
        assert head.body == b""
        assert head.headers["content-length"] == str(len(full.body))


@pytest.mark.parametrize(
    "target",
    [
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "//etc/passwd",
        "/clients/web/app.js",
        "/__init__.py",
        "/app.js/",
        "/APP.JS",
        "/ws",
        "http://evil.example/app.js",
    ],
)
async def test_nothing_outside_the_whitelist(
    autojump_clock: trio.testing.MockClock, target: str
) -> None:
    async with open_web_world() as world:
        answer = await world.get(target)
        assert answer.status == 404
        assert b"not found" in answer.body


async def test_other_methods_are_405(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        answer = await world.get("/", "POST", "Content-Length: 5", "", "hello")
        assert answer.status == 405
        assert answer.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"this is not http\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 40000 + b"\r\n\r\n", 431),
    ],
)
async def test_broken_requests_get_4xx(
    autojump_clock: trio.testing.MockClock, raw: bytes, status: int
) -> None:
    async with open_web_world() as world:
        answer = await world.request(raw)
        assert answer.status == status


async def test_server_full_answers_503(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world(max_connections=1) as world:
        alice, _ = await world.join_ws("alice")
        answer = await world.get("/")
        assert answer.status == 503
        assert await alice.chat("still fine") == 1


async def test_shutdown_stops_a_request_in_progress(autojump_clock: trio.testing.MockClock) -> None:
    async with open_web_world() as world:
        stream = await world.http.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        world.server.shutdown()
        assert await stream.receive_some(100) == b""
        assert trio.current_time() - start < 0.1


def test_every_whitelisted_file_ships_in_the_package() -> None:
    folder = resources.files("papaya_clients.web")
    for name in CLIENT_FILES:
        assert folder.joinpath(name).is_file(), name
    site = StaticSite.browser_client()
    assert set(site.files) == {*ROUTES, "/server.json"}


def test_the_page_loads_nothing_from_elsewhere() -> None:
    folder = resources.files("papaya_clients.web")
    page = folder.joinpath("index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script>" not in page and "style=" not in page  # the CSP forbids inline code


def test_the_client_never_turns_text_into_html() -> None:
    script = resources.files("papaya_clients.web").joinpath("app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script
