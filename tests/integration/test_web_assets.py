"""PROTOCOL section 8 `GET /`: the web client's files over plain HTTP, with their security and
cache headers (the browser tests in tests/browser/ run the page itself)."""

from __future__ import annotations

import re

import pytest

from .client import http

JS = "text/javascript; charset=utf-8"


def _directives(csp: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in csp.split(";"))


def _ws_port(node) -> str:
    return node.ws_url.rsplit(":", 1)[1].split("/")[0]


async def test_page_has_a_strict_csp_and_security_headers(server):
    server = server.nodes[0]    # the CSP names the WebSocket port of the node that answers
    async with http(server.http_url) as h:
        r = await h.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = _directives(r.headers["content-security-policy"])
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    # this origin, and the WebSocket listener's origin (another port), nothing else
    assert csp["connect-src"] == f"'self' ws://127.0.0.1:{_ws_port(server)}"
    assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'"
    assert csp["require-trusted-types-for"] == "'script'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    # no inline script or style in the page itself
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
    assert "<style" not in r.text and " style=" not in r.text


async def test_page_is_revalidated_with_an_etag(server):
    async with http(server.http_url) as h:
        first = await h.get("/")
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"
        again = await h.get("/", headers={"If-None-Match": etag})
        weak = await h.get("/", headers={"If-None-Match": f'"other", W/{etag}'})
        changed = await h.get("/", headers={"If-None-Match": '"something-else"'})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert weak.status_code == 304
    assert changed.status_code == 200 and changed.text == first.text


async def test_assets_are_versioned_and_cached(server):
    async with http(server.http_url) as h:
        page = (await h.get("/")).text
        script = re.search(r'<script type="module" src="(/assets/([0-9a-f]+)/app\.js)"', page)
        style = re.search(r'<link rel="stylesheet" href="(/assets/[0-9a-f]+/style\.css)"', page)
        assert script and style, page
        build = script.group(2)
        js = await h.get(script.group(1))
        css = await h.get(style.group(1))
        # app.js imports ./chat-client.js: it resolves under the same build
        client = await h.get(f"/assets/{build}/chat-client.js")
        stale = await h.get("/assets/0123456789abcdef/app.js")
        unknown = await h.get(f"/assets/{build}/secrets.txt")
    assert js.status_code == 200 and js.headers["content-type"] == JS
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "from './chat-client.js'" in js.text
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.status_code == 200 and "export class ChatClient" in client.text
    # another release's asset is not served as this one's, which would be cached for a year
    assert stale.status_code == 404 and stale.json()["error"] == "not_found"
    assert unknown.status_code == 404


async def test_chat_client_is_served_for_other_front_ends(server):
    async with http(server.http_url) as h:
        r = await h.get("/chat-client.js")
        again = await h.get("/chat-client.js", headers={"If-None-Match": r.headers["etag"]})
    assert r.status_code == 200 and r.headers["content-type"] == JS
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "export class ChatClient" in r.text and "document." not in r.text  # no DOM code
    assert again.status_code == 304


@pytest.mark.parametrize(
    ("host", "source"),
    [("localhost:3001", "ws://localhost:{port}"), ("chat.example.com", "ws://chat.example.com:{port}"),
     ("[::1]:3001", "ws:")],  # CSP host sources cannot hold an IPv6 literal
)
async def test_csp_follows_the_host_the_browser_used(server, host, source):
    server = server.nodes[0]
    async with http(server.http_url) as h:
        r = await h.get("/", headers={"Host": host})
    expected = source.format(port=_ws_port(server))
    assert _directives(r.headers["content-security-policy"])["connect-src"] == f"'self' {expected}"


class TestPublicWsUrl:
    @pytest.fixture
    def server_overrides(self):
        return {"public_ws_url": "wss://chat.example.com/ws"}

    async def test_csp_names_the_public_websocket_origin(self, server):
        async with http(server.http_url) as h:
            r = await h.get("/")
        assert _directives(r.headers["content-security-policy"])["connect-src"] == "'self' wss://chat.example.com"
