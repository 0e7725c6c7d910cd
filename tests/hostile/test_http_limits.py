"""HTTP requests that used to hold the server or answer 500 (PROTOCOL section 8).

Bodies: a declared length over `max_frame_bytes` is answered 413 before a byte of it is read,
and a streamed (chunked) body is stopped with 413 once it passes the limit; either way the
connection is closed, never left hanging. Stalls: headers or a body that stop arriving for
CHAT_HANDSHAKE_TIMEOUT close the connection. Query integers and deep `meta` are 400.

These talk raw HTTP/1.1 over a socket: an HTTP client library would finish or abort the body
on its own terms, and what matters here is what the server does with a client that does not.
"""

from __future__ import annotations

import json
from functools import partial
from urllib.parse import urlsplit

import pytest
import trio

from integration.client import auth, http, make_token

LIMIT = 65536
WAIT = 15.0  # generous bound on every wait; the tests measure no speed


async def open_http(http_url: str) -> trio.SocketStream:
    parts = urlsplit(http_url)
    return await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)


async def read_until_closed(stream: trio.SocketStream, timeout: float = WAIT) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # RST: the server closed with our bytes unread
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def send_until_refused(stream: trio.SocketStream, chunks, *, chunked: bool) -> int:
    """Send body chunks until the server stops taking them (closed) or they run out; bytes sent."""
    sent = 0
    try:
        for chunk in chunks:
            if chunked:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                await stream.send_all(chunk)
            sent += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


def response_status(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])


def response_json(raw: bytes) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("path", ["/api/register", "/api/login", "/api/rooms/x/messages", "/healthz"])
async def test_declared_length_over_the_limit_is_413_before_any_body(server, path: str) -> None:
    """Nothing of the 10 GiB is sent: the server answers from the headers alone, and closes."""
    stream = await open_http(server.http_url)
    async with stream:
        await stream.send_all(request_head(
            "POST", path, "Content-Type: application/json", f"Content-Length: {10 << 30}",
        ))
        raw = await read_until_closed(stream)
    assert response_status(raw) == 413, raw[:300]
    assert response_json(raw)["error"] == "too_large"
    assert b"\r\nconnection: close\r\n" in raw.lower()


async def test_chunked_body_is_stopped_at_the_limit(server) -> None:
    """A chunked body that passes the limit and never ends is answered 413 and closed; before,
    the server read on, waiting for the end of a body nobody would send."""
    stream = await open_http(server.http_url)
    async with stream:
        await stream.send_all(request_head(
            "POST", "/api/register", "Content-Type: application/json", "Transfer-Encoding: chunked",
        ))
        # 2 x the limit, then silence (no terminating chunk)
        await send_until_refused(stream, [b" " * 8192] * (2 * LIMIT // 8192), chunked=True)
        raw = await read_until_closed(stream)
    status = response_status(raw)
    assert status == 413, raw[:300]
    assert response_json(raw)["error"] == "too_large"


async def test_body_at_the_limit_is_read(server) -> None:
    """Exactly max_frame_bytes is allowed: the body is parsed (and refused for what it says)."""
    head = b'{"username":"alice","password":"x","pad":"'
    body = head + b"y" * (LIMIT - len(head) - 2) + b'"}'
    assert len(body) == LIMIT
    async with http(server.http_url) as h:
        r = await h.post("/api/register", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
    async with http(server.http_url) as h:
        r = await h.post("/api/register", content=body + b" ", headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text


async def test_unauthenticated_post_with_a_body_is_answered_and_closed(server) -> None:
    """401 before the body is read (no token), while the client streams on: the answer comes
    and the connection is closed (the rest of the body is never read), never left hanging."""
    stream = await open_http(server.http_url)
    async with stream:
        await stream.send_all(request_head(
            "POST", "/api/rooms/general/messages", "Content-Type: application/json",
            f"Content-Length: {LIMIT}",
        ))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(send_until_refused, stream, [b" " * 4096] * (LIMIT // 4096), chunked=False))
            raw = await read_until_closed(stream)
    assert response_status(raw) == 401, raw[:300]
    assert response_json(raw)["error"] == "unauthorized"


async def test_answer_before_a_queued_body_is_read_closes_instead_of_hanging(server) -> None:
    """300 small chunks arrive at once while the handler looks the token's user up in the store,
    then answers 401 without reading them. hypercorn's body channel (10 entries) is full by
    then, and its end-of-response step used to block on it: no close, ever, and the client
    waited forever. Now the answer comes and the connection closes."""
    ghost = make_token(server.secret, "ghost")  # signed right, but no such user: a store read
    chunk = b"64\r\n" + b"y" * 100 + b"\r\n"
    stream = await open_http(server.http_url)
    async with stream:
        await stream.send_all(request_head(
            "POST", "/api/rooms/general/messages", f"Authorization: Bearer {ghost}",
            "Content-Type: application/json", "Transfer-Encoding: chunked",
        ) + chunk * 300)  # under the limit, and never finished
        raw = await read_until_closed(stream)
    assert response_status(raw) == 401, raw[:300]
    assert response_json(raw)["error"] == "unauthorized"


async def test_keep_alive_still_works_after_a_small_request(server) -> None:
    """The limits leave ordinary connections alone: two requests on one connection."""
    stream = await open_http(server.http_url)
    async with stream:
        await stream.send_all(request_head("GET", "/healthz") + request_head("GET", "/healthz", "Connection: close"))
        raw = await read_until_closed(stream)
    assert raw.count(b"HTTP/1.1 200") == 2, raw


# --------------------------------------------------------------------------- stalls


class TestStalls:
    @pytest.fixture
    def server_overrides(self):
        return {"handshake_timeout_s": 1.0}

    async def test_half_sent_headers_then_silence_is_closed(self, server) -> None:
        stream = await open_http(server.http_url)
        async with stream:
            await stream.send_all(b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            raw = await read_until_closed(stream)
        assert b"HTTP/1.1 2" not in raw

    async def test_body_that_stops_arriving_is_closed(self, server) -> None:
        """Headers complete, 10 of 100 body bytes, then silence: before, the connection was held
        for as long as the client kept it open (hypercorn's keep-alive timer is off while a
        request is in progress)."""
        stream = await open_http(server.http_url)
        async with stream:
            await stream.send_all(request_head(
                "POST", "/api/login", "Content-Type: application/json", "Content-Length: 100",
            ) + b'{"username')
            raw = await read_until_closed(stream)
        assert b"HTTP/1.1 2" not in raw

    async def test_a_prompt_request_is_served(self, server) -> None:
        async with http(server.http_url) as h:
            assert (await h.get("/healthz")).status_code == 200


# --------------------------------------------------------------------------- query integers


@pytest.mark.parametrize("name", ["before", "after", "limit"])
@pytest.mark.parametrize(
    "value",
    ["9" * 5000, "1" + "0" * 4300, str(2**53), str(2**64), "-1", "1e3", "0x10", "1.0", " 1", "١"],
    ids=["5000-digits", "4301-digits", "2^53", "2^64", "negative", "exp", "hex", "float", "space", "arabic-digit"],
)
async def test_query_integer_that_is_not_small_decimal_is_400(server, name: str, value: str) -> None:
    token = await server.user("alice")
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/general/messages", params={name: value}, headers=auth(token))
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert r.json()["error"] == "bad_request"


async def test_query_integer_given_twice_is_400(server) -> None:
    token = await server.user("alice")
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/general/messages?limit=1&limit=200", headers=auth(token))
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text


async def test_query_cursors_at_the_top_of_the_range_are_fine(server) -> None:
    token = await server.user("alice")
    async with http(server.http_url) as h:
        assert (await h.post("/api/rooms", json={"name": "general"}, headers=auth(token))).status_code == 201
        for params in ({"before": str(2**53 - 1)}, {"after": str(2**53 - 1)}, {"before": "0", "after": "0"}):
            r = await h.get("/api/rooms/general/messages", params=params, headers=auth(token))
            assert r.status_code == 200, (params, r.text)
            assert r.json()["messages"] == []


# --------------------------------------------------------------------------- deep meta


def nested(depth: int) -> str:
    return "[" * (depth - 1) + "]" * (depth - 1)


@pytest.mark.parametrize("depth", [33, 255, 480, 1000])
async def test_publish_with_deeply_nested_meta_is_400(server, depth: int) -> None:
    """Under 1 KiB of brackets; orjson re-encodes at most 254 levels, which used to be a 500."""
    token = await server.user("alice")
    body = '{"id":"m1","text":"hi","meta":{"a":%s}}' % nested(depth)
    async with http(server.http_url) as h:
        assert (await h.post("/api/rooms", json={"name": "general"}, headers=auth(token))).status_code == 201
        r = await h.post("/api/rooms/general/messages", content=body, headers={
            **auth(token), "Content-Type": "application/json"})
        assert r.status_code == 400, (r.status_code, r.text[:200])
        assert r.json()["error"] == "bad_request"
        page = await h.get("/api/rooms/general/messages", headers=auth(token))
    assert page.json()["messages"] == []


async def test_body_nested_deeper_than_json_parsers_go_is_400(server) -> None:
    body = '{"username":%s,"password":"correct-horse"}' % nested(5000)
    async with http(server.http_url) as h:
        r = await h.post("/api/register", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text[:200]


async def test_publish_with_modest_nesting_is_stored(server) -> None:
    token = await server.user("alice")
    meta = {"a": [[[[{"b": [1, 2, {"c": None}]}]]]]}
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json={"id": "m1", "text": "hi", "meta": meta},
                         headers=auth(token))
        assert r.status_code == 201, r.text
        page = await h.get("/api/rooms/general/messages", headers=auth(token))
    assert page.json()["messages"][0]["meta"] == meta
