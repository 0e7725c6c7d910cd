"""chat_actors.transport against real clients on loopback.

trio-websocket plays the well-behaved client; a raw socket client (below) plays the rude
ones: a client that never answers pings, stops reading, sends invalid UTF-8 or nothing.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.extensions import PerMessageDeflate

from chat_actors.errors import Unauthorized
from chat_actors.frames import encode_text_frame
from chat_actors.transport import ConnectionClosed, TransportSettings, WebSocket
from chat_actors.ws_server import WsServer

FAST = TransportSettings(heartbeat_s=30.0, close_timeout_s=0.5, handshake_timeout_s=5.0)
BAD_REQUEST = b'{"type":"error","code":"bad_request"}'
UPGRADE_HEADERS = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: ")


async def authenticate(token: str) -> object:
    if token == "good":
        return {"user": "alice"}
    raise Unauthorized("invalid token")


class Harness:
    """A running WsServer whose handler echoes text, answers binary with bad_request, and
    hands every accepted WebSocket to the test. `?mode=` picks another behaviour."""

    def __init__(self) -> None:
        self.server: WsServer
        self.port = 0
        self._accepted_send, self.accepted = trio.open_memory_channel[WebSocket](100)
        self.closed_codes: dict[str, int | None] = {}
        self.ended: set[str] = set()            # handlers of mode=stuck that have finished

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def handler(self, ws: WebSocket) -> None:
        await self._accepted_send.send(ws)
        mode = ws.handshake.query.get("mode", "echo")
        if mode == "raise":
            raise RuntimeError("handler failure (expected by the test)")
        if mode == "return":
            return
        if mode == "hold":
            await ws.wait_closed()
            return
        if mode == "stuck":                     # waits for something that is not the socket
            try:
                await trio.sleep_forever()
            finally:
                self.ended.add(ws.id)
        try:
            while True:
                message = await ws.receive()
                if isinstance(message, bytes):
                    ws.send_event_bytes(BAD_REQUEST)
                else:
                    await ws.send_paced(encode_text_frame(message.encode()))
        except ConnectionClosed as exc:
            self.closed_codes[ws.id] = exc.code


@asynccontextmanager
async def serving(settings: TransportSettings = FAST, **kwargs) -> AsyncIterator[Harness]:
    harness = Harness()
    harness.server = WsServer(harness.handler, host="127.0.0.1", port=0, settings=settings, **kwargs)
    async with trio.open_nursery() as nursery:
        host, harness.port = await nursery.start(harness.server.run)
        assert host == "127.0.0.1" and harness.port > 0
        yield harness
        nursery.cancel_scope.cancel()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame as a browser would send it (masked), or deliberately not."""
    header = bytearray([(0x80 if fin else 0) | opcode])
    size = len(payload)
    flag = 0x80 if mask else 0
    if size < 126:
        header.append(flag | size)
    elif size < 65536:
        header += struct.pack("!BH", flag | 126, size)
    else:
        header += struct.pack("!BQ", flag | 127, size)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        header += key
    return bytes(header) + payload


class RawClient:
    """Hand-made masked frames over a plain TCP stream, for what polite clients never do."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, target: str = "/ws", headers: str = "") -> tuple[RawClient, int, bytes]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"{headers}\r\n")
        await stream.send_all(request.encode())
        client = cls(stream)
        head = await client.read_until(b"\r\n\r\n")
        return client, int(head.split(b" ", 2)[1]), head

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError
        index = self.buffer.index(marker) + len(marker)
        head = bytes(self.buffer[:index])
        del self.buffer[:index]
        return head

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (server frames are never masked)."""
        first, second = await self.read_exactly(2)
        assert second & 0x80 == 0, "server frames must not be masked"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.read_exactly(8))
        return first & 0x0F, await self.read_exactly(size)

    async def read_close_code(self) -> int:
        """Skip frames until the close frame; its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0]

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        await self.stream.send_all(client_frame(opcode, payload, fin=fin, mask=mask))

    async def wait_eof(self) -> None:
        while await self._fill():
            self.buffer.clear()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def close_code_of(exc: trio_websocket.ConnectionClosed) -> int:
    return exc.reason.code


# --- handshake -----------------------------------------------------------------------------

async def test_other_path_is_404() -> None:
    async with serving() as harness:
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{harness.port}/nope"):
                pass
        assert info.value.status_code == 404
        assert json.loads(info.value.body)["error"] == "not_found"


async def test_disallowed_origin_is_403_and_allowed_or_absent_origin_accepted() -> None:
    settings = TransportSettings(allowed_origins=("https://chat.example.com",), close_timeout_s=0.5)
    async with serving(settings) as harness:
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(
                    harness.url, extra_headers=[(b"Origin", b"https://evil.example.com")]):
                pass
        assert info.value.status_code == 403
        assert json.loads(info.value.body)["error"] == "forbidden"
        for headers in ([(b"Origin", b"https://chat.example.com")], []):
            async with trio_websocket.open_websocket_url(harness.url, extra_headers=headers) as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "hi"


@pytest.mark.parametrize("target, headers", [
    ("/ws", [(b"Authorization", b"Bearer nope")]),
    ("/ws?token=nope", []),
    ("/ws?token=", []),
    ("/ws?token=good", [(b"Authorization", b"Basic Z29vZA==")]),
    ("/ws?token=good", [(b"Authorization", b"Bearer")]),
    ("/ws?token=good", [(b"Authorization", b"")]),
    ("/ws?token=good", [(b"Authorization", b"Bearer nope")]),    # a bad header is never skipped
    # ambiguous credentials: whoever reads the other one would see another user
    ("/ws", [(b"Authorization", b"Bearer good"), (b"Authorization", b"Bearer nope")]),
    ("/ws", [(b"Authorization", b"Bearer good"), (b"Authorization", b"Bearer good")]),
    ("/ws?token=good&token=nope", []),
    ("/ws?token=good&token=good", []),
    ("/ws?token=nope&token=good", []),
    ("/ws?token=good&%74oken=nope", []),                        # the same name, percent-encoded
    ("/ws?token=good&token=nope", [(b"Authorization", b"Bearer good")]),
])
async def test_bad_token_or_non_bearer_authorization_is_401(target: str, headers: list) -> None:
    async with serving(authenticate=authenticate) as harness:
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{harness.port}{target}",
                                                         extra_headers=headers):
                pass
        assert info.value.status_code == 401
        assert json.loads(info.value.body)["error"] == "unauthorized"


@pytest.mark.parametrize("target, headers", [
    ("/ws", [(b"Authorization", b"Bearer good")]),
    ("/ws", [(b"Authorization", b"bEaReR good")]),
    ("/ws?token=good", []),
    ("/ws?token=nope", [(b"Authorization", b"Bearer good")]),   # the header wins
])
async def test_token_accepted_and_principal_in_handshake(target: str, headers: list) -> None:
    async with serving(authenticate=authenticate) as harness, trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{harness.port}{target}", extra_headers=headers):
        ws = await harness.accepted.receive()
        assert ws.handshake.token == "good"
        assert ws.handshake.principal == {"user": "alice"}
        assert ws.handshake.path == "/ws"
        assert ws.handshake.remote.startswith("127.0.0.1:")
        assert "good" not in repr(ws.handshake)                 # tokens never reach the logs


async def test_no_token_means_no_principal_and_query_kept() -> None:
    async with serving(authenticate=authenticate) as harness, \
            trio_websocket.open_websocket_url(harness.url + "?a=1&b=two"):
        ws = await harness.accepted.receive()
        assert ws.handshake.token is None and ws.handshake.principal is None
        assert dict(ws.handshake.query) == {"a": "1", "b": "two"}
        assert ("host", f"127.0.0.1:{harness.port}") in ws.handshake.headers


async def test_no_extension_negotiated_when_client_offers_deflate() -> None:
    async with serving() as harness:
        client, status, head = await RawClient.connect(
            harness.port, headers="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        assert status == 101
        assert b"sec-websocket-extensions" not in head.lower()
        await client.send_frame(0x1, b"plain")
        assert await client.read_frame() == (0x1, b"plain")
        # and a wsproto client offering the extension ends up without it
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        wsc = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(wsc.send(Request(host="127.0.0.1", target="/ws", extensions=[PerMessageDeflate()])))
        accepted = None
        while accepted is None:
            wsc.receive_data(await stream.receive_some(4096))
            accepted = next((e for e in wsc.events() if isinstance(e, AcceptConnection)), None)
        assert accepted.extensions == []
        await stream.aclose()


async def test_frames_sent_with_the_request_are_not_lost() -> None:
    async with serving() as harness:
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        client = RawClient(stream)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        await stream.send_all(request + client_frame(0x1, b"early"))    # one write
        head = await client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert await client.read_frame() == (0x1, b"early")


async def test_oversized_upgrade_request_is_refused() -> None:
    settings = TransportSettings(max_request_bytes=4096, close_timeout_s=0.5)
    async with serving(settings) as harness:
        _client, status, _head = await RawClient.connect(harness.port, headers=f"X-Big: {'a' * 20000}\r\n")
        assert status in (400, 431)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),                    # not an upgrade
    (b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"GET /ws HTTP/1.0\r\n\r\n", b"400"),
    (b"nonsense\r\n\r\n", b"400"),
    (b"GET /ws HTTP/1.1\r\nHost: \xff\xfe\r\n" + UPGRADE_HEADERS + b"13\r\n\r\n", b"400"),
    (b"GET /ws?x=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n" + UPGRADE_HEADERS + b"13\r\n\r\n", b"400"),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + UPGRADE_HEADERS + b"8\r\n\r\n", b"426"),
    # Sec-WebSocket-Key must be the base64 form of 16 bytes (RFC 6455 4.2.1)
    *[(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n", b"400")
      for key in (b"x", b"not base64 at all!!!!!==", base64.b64encode(b"15 bytes only..")[:-1],
                  base64.b64encode(b"17 bytes, one more"), base64.b64encode(os.urandom(16)).rstrip(b"="),
                  b"dGhlIHNhbXBsZSBub25jZR==",          # 16 bytes, but not their canonical form
                  base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)))],
    # the path is checked first: a bad key on another path is still 404
    (b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n", b"404"),
])
async def test_malformed_upgrades_get_an_http_error(request_bytes: bytes, status: bytes) -> None:
    async with serving() as harness:
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        await stream.send_all(request_bytes)
        client = RawClient(stream)
        head = await client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status)
        body = await client.read_until(b"}")
        assert "error" in json.loads(body)
        with trio.fail_after(10):
            await client.wait_eof()


async def test_silent_client_is_dropped_after_handshake_timeout() -> None:
    settings = TransportSettings(handshake_timeout_s=0.2)
    async with serving(settings) as harness:
        stream = await trio.open_tcp_stream("127.0.0.1", harness.port)
        with trio.fail_after(10):
            assert await stream.receive_some(100) == b""


# --- messages ----------------------------------------------------------------------------

async def test_text_echo_and_binary_is_bytes_connection_stays_open() -> None:
    async with serving() as harness, trio_websocket.open_websocket_url(harness.url) as ws:
        await ws.send_message("héllo")
        assert await ws.get_message() == "héllo"
        await ws.send_message(b"\x00\x01")
        assert json.loads(await ws.get_message())["code"] == "bad_request"
        await ws.send_message("still open")
        assert await ws.get_message() == "still open"


async def test_fragmented_message_is_one_message() -> None:
    async with serving() as harness:
        client, status, _ = await RawClient.connect(harness.port)
        assert status == 101
        await client.send_frame(0x1, b"ab", fin=False)
        await client.send_frame(0x9, b"p")                      # a ping between fragments
        await client.send_frame(0x0, "cé".encode()[:2], fin=False)
        await client.send_frame(0x0, "cé".encode()[2:])
        assert await client.read_frame() == (0xA, b"p")
        assert await client.read_frame() == (0x1, "abcé".encode())


async def test_frames_cut_by_reads_are_put_together() -> None:
    """Reads that end inside a header, a mask key or a payload: the rest waits for the next."""
    async with serving() as harness:
        client, _, _ = await RawClient.connect(harness.port)
        data = client_frame(0x1, b"one") + client_frame(0x9, b"p") + client_frame(0x1, "é".encode() * 100)
        for start, stop in ((0, 1), (1, 4), (4, 11), (11, 14), (14, 20), (20, len(data))):
            await client.stream.send_all(data[start:stop])
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            assert await client.read_frame() == (0x1, b"one")
            assert await client.read_frame() == (0xA, b"p")
            assert await client.read_frame() == (0x1, "é".encode() * 100)


async def test_big_frames_survive_partial_writes() -> None:
    settings = TransportSettings(max_frame_bytes=8 << 20, send_queue_bytes=32 << 20, close_timeout_s=0.5)
    async with serving(settings) as harness, trio_websocket.open_websocket_url(harness.url, max_message_size=16 << 20) as ws:
        server_ws = await harness.accepted.receive()
        big = os.urandom(3 << 20).hex()                     # 6 MiB, far over the socket buffer
        assert server_ws.deliver(encode_text_frame(b"first"), durable=True)
        assert server_ws.deliver(encode_text_frame(big.encode()), durable=True)
        assert server_ws.deliver(encode_text_frame(b"last"), durable=True)
        assert await ws.get_message() == "first"
        assert await ws.get_message() == big
        assert await ws.get_message() == "last"
        await ws.send_message(big)
        assert await ws.get_message() == big


async def test_oversize_message_closes_1009() -> None:
    settings = TransportSettings(max_frame_bytes=1000, close_timeout_s=0.5)
    async with serving(settings) as harness, trio_websocket.open_websocket_url(harness.url) as ws:
        await ws.send_message("x" * 1001)
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        assert close_code_of(info.value) == 1009
        # fragments are summed
        client, _, _ = await RawClient.connect(harness.port)
        for opcode in (0x1, 0x0, 0x0):
            await client.send_frame(opcode, b"y" * 400, fin=False)
        assert await client.read_close_code() == 1009


async def test_message_at_the_limit_counts_utf8_bytes() -> None:
    settings = TransportSettings(max_frame_bytes=1000, close_timeout_s=0.5)
    async with serving(settings) as harness, trio_websocket.open_websocket_url(harness.url) as ws:
        await ws.send_message("é" * 500)                    # 1000 bytes: fits
        assert await ws.get_message() == "é" * 500
        await ws.send_message("é" * 501)                    # 501 chars, 1002 bytes: too big
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        assert close_code_of(info.value) == 1009


async def test_invalid_utf8_closes_1007() -> None:
    async with serving() as harness:
        client, _, _ = await RawClient.connect(harness.port)
        await client.send_frame(0x1, b"ok \xff\xfe")
        assert await client.read_close_code() == 1007
        with trio.fail_after(10):
            await client.wait_eof()


@pytest.mark.parametrize("frame", [
    bytes([0x83, 0x80, 0, 0, 0, 0]),        # reserved opcode
    bytes([0xC1, 0x80, 0, 0, 0, 0]),        # RSV1 without an extension
    bytes([0x81, 0x02]) + b"hi",            # unmasked client frame
    bytes([0x80, 0x80, 0, 0, 0, 0]),        # continuation without a start
    # lengths in more bytes than needed: wsproto refuses them, so the fast path must too
    bytes([0x81, 0x80 | 126, 0, 2, 0, 0, 0, 0]) + b"hi",
    bytes([0x81, 0x80 | 126, 0, 125, 0, 0, 0, 0]) + b"h" * 125,
    bytes([0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]) + b"hi",
    bytes([0x89, 0x80 | 126, 0, 2, 0, 0, 0, 0]) + b"hi",     # a control frame never has one
    bytes([0x09, 0x82, 0, 0, 0, 0]) + b"hi",                  # fragmented ping
    bytes([0xA1, 0x82, 0, 0, 0, 0]) + b"hi",                  # RSV2 on a text frame
    bytes([0x99, 0x82, 0, 0, 0, 0]) + b"hi",                  # RSV1 on a ping
])
async def test_protocol_violation_closes_1002(frame: bytes) -> None:
    async with serving() as harness:
        client, _, _ = await RawClient.connect(harness.port)
        await client.stream.send_all(frame)
        with trio.fail_after(10):
            assert await client.read_close_code() == 1002
            await client.wait_eof()


async def test_ping_is_answered_and_peer_close_is_echoed() -> None:
    async with serving() as harness:
        client, _, _ = await RawClient.connect(harness.port)
        ws = await harness.accepted.receive()
        await client.send_frame(0x9, b"are you there")
        assert await client.read_frame() == (0xA, b"are you there")
        await client.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        assert await client.read_frame() == (0x8, struct.pack("!H", 1000) + b"bye")
        with trio.fail_after(10):
            await client.wait_eof()
            await ws.wait_closed()
        assert ws.close_code == 1000 and ws.closed
        assert harness.closed_codes[ws.id] == 1000
        assert ws not in harness.server.connections


async def test_handler_return_closes_1000_and_exception_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as harness:
        for mode, code in (("return", 1000), ("raise", 1011)):
            async with trio_websocket.open_websocket_url(f"{harness.url}?mode={mode}") as ws:
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
                assert close_code_of(info.value) == code
    assert "handler failed" in caplog.text


async def test_non_minimal_length_after_fast_frames_still_closes_1002() -> None:
    """The fast path hands the frame to wsproto in the middle of a read, after frames it took."""
    async with serving() as harness:
        client, _, _ = await RawClient.connect(harness.port)
        bad = bytes([0x81, 0x80 | 126, 0, 2, 0, 0, 0, 0]) + b"hi"
        await client.stream.send_all(client_frame(0x1, b"one") + client_frame(0x1, b"two") + bad)
        with trio.fail_after(10):
            assert await client.read_close_code() == 1002   # echoes, if any, come before it


# --- peers that vanish ---------------------------------------------------------------------

async def test_reset_ends_the_handler_whatever_it_waits_for() -> None:
    """A peer's RST ends the session even while the handler waits for something other than
    the socket, and even while the reader waits for the handler (a full mailbox), so that
    nobody reads the socket: the sweep sees that reset. Heartbeat and close timeout are far
    off, so neither can be what ends them."""
    settings = TransportSettings(heartbeat_s=60.0, close_timeout_s=60.0)
    async with serving(settings) as harness:
        idle, _, _ = await RawClient.connect(harness.port, "/ws?mode=stuck")
        idle_ws = await harness.accepted.receive()
        blocked, _, _ = await RawClient.connect(harness.port, "/ws?mode=stuck")
        blocked_ws = await harness.accepted.receive()
        await blocked.stream.send_all(b"".join(client_frame(0x1, b"m%d" % i) for i in range(40)))
        await trio.testing.wait_all_tasks_blocked()          # the reader holds what it read
        idle.reset()
        blocked.reset()
        with trio.fail_after(10):                            # the requirement is one sweep (<= 0.5 s)
            while harness.ended != {idle_ws.id, blocked_ws.id}:
                await trio.sleep(0.05)
            await idle_ws.wait_closed()
            await blocked_ws.wait_closed()
        assert idle_ws.close_code == blocked_ws.close_code == 1006
        assert harness.server.connections == frozenset()


async def test_reset_during_the_close_handshake_drops_at_once() -> None:
    settings = TransportSettings(heartbeat_s=60.0, close_timeout_s=60.0)
    async with serving(settings) as harness:
        client, _, _ = await RawClient.connect(harness.port, "/ws?mode=hold")
        ws = await harness.accepted.receive()
        ws.close(4000, "bye")                                # the client never answers it
        assert (await client.read_frame())[0] == 0x8
        client.reset()
        with trio.fail_after(10):
            await ws.wait_closed()


# --- heartbeat -----------------------------------------------------------------------------

async def test_client_that_never_answers_pings_is_closed_4000() -> None:
    settings = TransportSettings(heartbeat_s=0.2, close_timeout_s=0.5)
    async with serving(settings) as harness:
        client, _, _ = await RawClient.connect(harness.port)
        with trio.fail_after(10):
            opcode, _ = await client.read_frame()
            assert opcode == 0x9                                 # the server pings first
            assert await client.read_close_code() == 4000
            await client.wait_eof()                              # never answered: dropped


async def test_client_answering_pings_stays_open() -> None:
    settings = TransportSettings(heartbeat_s=0.1, close_timeout_s=0.5)
    async with serving(settings) as harness, trio_websocket.open_websocket_url(harness.url) as ws:   # answers pings itself
        await trio.sleep(1.0)                                # ten heartbeats
        await ws.send_message("alive")
        assert await ws.get_message() == "alive"


# --- backpressure --------------------------------------------------------------------------

async def test_client_that_stops_reading_is_evicted_4008() -> None:
    settings = TransportSettings(send_queue_bytes=256 * 1024, close_timeout_s=0.3)
    async with serving(settings) as harness:
        client, _, _ = await RawClient.connect(harness.port, "/ws?mode=hold")
        ws = await harness.accepted.receive()
        frame = encode_text_frame(b"m" * 16384)
        delivered = 0
        with trio.fail_after(30):
            while ws.deliver(frame, durable=True):
                delivered += 1
                if delivered % 64 == 0:
                    await trio.lowlevel.checkpoint()                          # let the writer run
            assert ws.close_code == 4008 and ws.closed
            assert not ws.deliver(frame, durable=True)
            await ws.wait_closed()                               # dropped: the close could not get through
        assert ws.backlog_bytes == 0
        await client.stream.aclose()


async def test_ephemeral_dropped_when_half_full_and_paced_send_waits() -> None:
    settings = TransportSettings(send_queue_bytes=256 * 1024, close_timeout_s=0.5)
    async with serving(settings) as harness:
        client, _, _ = await RawClient.connect(harness.port, "/ws?mode=hold")
        ws = await harness.accepted.receive()
        frame = encode_text_frame(b"e" * 8192)
        with trio.fail_after(30):
            while ws.backlog_bytes <= 128 * 1024:                # fill past half, below the limit
                assert ws.deliver(frame, durable=True)
                await trio.lowlevel.checkpoint()
        assert not ws.deliver(encode_text_frame(b"typing"), durable=False)
        assert not ws.closed
        paced_done = trio.Event()

        async def paced() -> None:
            await ws.send_paced(encode_text_frame(b"paced"))
            paced_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(paced)
            await trio.testing.wait_all_tasks_blocked()
            assert not paced_done.is_set()                       # waits for the backlog to drain
            with trio.fail_after(30):
                while True:                                      # now read everything
                    _opcode, payload = await client.read_frame()
                    if payload == b"paced":
                        break
        assert paced_done.is_set() and not ws.closed
        assert ws.deliver(encode_text_frame(b"typing"), durable=False)
        assert await client.read_frame() == (0x1, b"typing")


# --- server lifecycle ----------------------------------------------------------------------

async def test_close_all_sends_1001_and_stop_accepting() -> None:
    async with serving() as harness, trio_websocket.open_websocket_url(harness.url) as one, \
            trio_websocket.open_websocket_url(harness.url) as two:
            stuck, _, _ = await RawClient.connect(harness.port, "/ws?mode=hold")   # never answers close
            with trio.fail_after(10):
                while len(harness.server.connections) < 3:
                    await trio.sleep(0.01)
            harness.server.stop_accepting()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", harness.port)
            with trio.fail_after(10):
                await harness.server.close_all(1001, 1.0)
            for client in (one, two):
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await client.get_message()
                assert close_code_of(info.value) == 1001
            assert await stuck.read_close_code() == 1001
            assert harness.server.connections == frozenset()
