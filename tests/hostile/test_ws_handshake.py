"""Upgrade requests that are ambiguous or malformed (PROTOCOL section 2).

Two `Authorization` headers or two `token` parameters used to be resolved by taking the
first, so a proxy or an audit log that reads the last one would see another user than the
one the server authenticated. And a `Sec-WebSocket-Key` that is not the base64 form of
16 bytes was accepted although RFC 6455 makes it a 400.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlsplit

import pytest
import trio

from integration.client import raw_connect, upgrade_status


async def _two_users(server) -> tuple[str, str]:
    return await server.user("alice"), await server.user("mallory")


async def test_two_token_parameters_are_refused_401(server) -> None:
    alice, mallory = await _two_users(server)
    for first, second in ((alice, mallory), (mallory, alice), (alice, alice)):
        query = f"token={quote(first, safe='')}&token={quote(second, safe='')}"
        assert await upgrade_status(server.ws_url, query=query) == 401
    assert await upgrade_status(server.ws_url, alice, auth="query") == 101


async def test_two_authorization_headers_are_refused_401(server) -> None:
    alice, mallory = await _two_users(server)
    for first, second in ((alice, mallory), (alice, alice)):
        headers = [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
        assert await upgrade_status(server.ws_url, headers=headers) == 401
    assert await upgrade_status(server.ws_url, alice) == 101


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Basic YWxpY2U6eA==", "Bearer", ""])
async def test_bad_authorization_next_to_a_valid_query_token_is_401(server, header: str) -> None:
    alice, _ = await _two_users(server)
    query = "token=" + quote(alice, safe="")
    assert await upgrade_status(server.ws_url, query=query, headers=[("Authorization", header)]) == 401


async def _raw_upgrade(ws_url: str, key: bytes, path: str | None = None) -> tuple[bytes, dict]:
    parts = urlsplit(ws_url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    request = (b"GET " + (path or parts.path).encode() + b" HTTP/1.1\r\nHost: " + parts.netloc.encode()
               + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
               + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await stream.send_all(request)
    received = b""
    with trio.fail_after(10):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            received += data
    await stream.aclose()
    head, _, body = received.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1], json.loads(body)


@pytest.mark.parametrize("key", [
    b"x",
    b"dGhlIHNhbXBsZSBub25jZQ",                           # 16 bytes without the padding
    base64.b64encode(b"fifteen bytes!!"),
    base64.b64encode(b"seventeen bytes!!"),
    b"!!!!!!!!!!!!!!!!!!!!!!==",
])
async def test_malformed_sec_websocket_key_is_refused_400(server, key: bytes) -> None:
    status, body = await _raw_upgrade(server.ws_url, key)
    assert status == b"400" and body["error"] == "bad_request"
    status, body = await _raw_upgrade(server.ws_url, key, path="/elsewhere")
    assert status == b"404" and body["error"] == "not_found"        # the path is checked first


async def test_valid_key_still_upgrades(server) -> None:
    token = await server.user("alice")
    async with raw_connect(server.ws_url, token) as client:
        assert (await client.recv_json())["type"] == "welcome"
