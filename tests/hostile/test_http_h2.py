"""The HTTP listener speaks HTTP/1.1 only (PROTOCOL section 8): no cleartext HTTP/2.

hypercorn switched to HTTP/2 on the `PRI * HTTP/2.0` preface (prior knowledge) and answered
`Upgrade: h2c` with 101; see chat_actors/hypercorn_h11.py for how that is turned off. Raw
sockets, because the point is the bytes the server sends back.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
import trio

WAIT = 15.0
#: the client preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def exchange(http_url: str, data: bytes) -> bytes:
    """Send `data`, return everything the server sends until it closes (or WAIT passes)."""
    parts = urlsplit(http_url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    received = bytearray()
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(WAIT):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return bytes(received)


@pytest.fixture
def server_overrides():
    return {"handshake_timeout_s": 1.0}  # idle keep-alive connections close after 1 s


def looks_like_http2_settings(data: bytes) -> bool:
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00"


async def test_http2_prior_knowledge_preface_gets_no_http2(server) -> None:
    """The preface is answered 400 in HTTP/1.1 (the binary rest gets hypercorn's 400 too), and
    the connection closed; before, the server answered with its HTTP/2 SETTINGS frame."""
    raw = await exchange(server.http_url, PREFACE)
    assert not looks_like_http2_settings(raw), raw[:64]
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    assert json.loads(rest[:length])["error"] == "bad_request"
    assert b"\x00\x00" not in rest[length:], rest[length:]  # whatever follows is HTTP/1.1 too


async def test_h2c_upgrade_is_ignored_and_served_as_http11(server) -> None:
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    raw = await exchange(server.http_url, request)
    assert not raw.startswith(b"HTTP/1.1 101"), raw[:200]
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"upgrade: h2c" not in head.lower()
    assert body.startswith(b'{"status":"ok"}'), raw[:300]


async def test_http10_is_still_served(server) -> None:
    raw = await exchange(server.http_url, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
