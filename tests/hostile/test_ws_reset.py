"""Peers that vanish with a TCP reset must not stay counted as sessions.

Before the fix about 2,300 sessions whose peers had sent RST stayed in `chat_connections` for
over a minute: Linux keeps what such a peer sent before its reset readable and reports the
reset only after it, so the server went on serving a dead peer's pipelined commands, and a
reader that waits for its handler does not look at the socket at all. Here 200 connections
in different states are reset at once and the server must forget them all within one sweep
(the bound below is generous; the requirement is a second).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from urllib.parse import urlsplit

import pytest
import trio

from integration.client import build_frame, http

USERS = 5                   # 40 connections each, well under max_connections_per_user
GROUPS = {"idle": 30, "backlog": 30, "paced": 30, "flood": 110}
READ_FLOOD_FRAMES = 12000   # pipelined `read` commands per flooding connection (~590 KB)


@pytest.fixture
def server_overrides() -> dict:
    # Heartbeats far off (they cannot be what ends the sessions); a small send queue, so a
    # history page is more than half of it and the next one waits in send_paced.
    return {"heartbeat_s": 60.0, "send_queue_bytes": 65536, "rate_burst": 100}


def text(obj: dict) -> bytes:
    return build_frame(0x1, json.dumps(obj).encode())


class Peer:
    """A raw client on a non-blocking stdlib socket: it may stop reading, pipeline without
    limit, and end with RST instead of FIN."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def open(cls, ws_url: str, token: str, *, rcvbuf: int | None = None) -> Peer:
        parts = urlsplit(ws_url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            sock.connect((parts.hostname, parts.port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        peer = cls(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        await peer.send_all((
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode())
        await peer.read_until(b'{"type":"synced"}')
        assert peer.buffer.startswith(b"HTTP/1.1 101"), peer.buffer[:200]
        peer.buffer = b""
        return peer

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    def stuff(self, data: bytes) -> int:
        """Write what the kernel takes right now, without waiting; the bytes taken."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            assert data, f"closed while waiting for {marker!r}: {self.buffer[-200:]!r}"
            self.buffer += data

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def chat_connections(server) -> float:
    async with http(server.http_url) as h:
        r = await h.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith("chat_connections "):
            return float(line.split()[1])
    raise AssertionError("no chat_connections in /metrics")


async def test_reset_peers_leave_chat_connections_within_a_sweep(server) -> None:
    tokens = [await server.user(f"reset{i}") for i in range(USERS)]
    async with server.connect(tokens[0]) as publisher:
        await publisher.join("busy")
        baseline = await chat_connections(server)
        peers: dict[str, list[Peer]] = {name: [] for name in GROUPS}
        opened = 0
        for name, size in GROUPS.items():
            for _ in range(size):
                rcvbuf = None if name in ("idle", "flood") else 4096
                peers[name].append(await Peer.open(server.ws_url, tokens[opened % USERS], rcvbuf=rcvbuf))
                opened += 1
        # joined to a room that is about to get ~160 KB: the kernel buffers fill and a
        # backlog waits for the writer
        for peer in peers["backlog"]:
            await peer.send_all(text({"type": "join", "room": "busy", "ref": "j"}))
            await peer.read_until(b'"joined"')
        # joined to a quiet room, so their `read`s are valid and never answered
        for peer in peers["flood"]:
            await peer.send_all(text({"type": "join", "room": "quiet", "ref": "j"}))
            await peer.read_until(b'"joined"')
        assert await chat_connections(server) == baseline + opened
        for i in range(40):
            ack = await publisher.send_message("busy", f"{i:04d}" + "x" * 3900)
            assert ack["type"] == "ack", ack
        # history pages of ~160 KB that nobody reads: the handler waits (in send_paced for
        # the backlog to drain, or for its turn at the store), its mailbox fills, and the
        # reader waits for the handler instead of watching the socket
        for peer in peers["paced"]:
            await peer.send_all(b"".join(text({"type": "history", "room": "busy"}) for _ in range(15)))
        # pipelined commands that get no answer: the server is still working through them
        # (or waiting to) when the reset comes
        flood = text({"type": "read", "room": "quiet", "seq": 1}) * READ_FLOOD_FRAMES
        for peer in peers["flood"]:
            peer.stuff(flood)
        await trio.sleep(0.5)                           # let every state set in
        assert await chat_connections(server) == baseline + opened
        for group in peers.values():
            for peer in group:
                peer.reset()
        with trio.fail_after(5):
            while await chat_connections(server) > baseline:
                await trio.sleep(0.1)
        # the server is fine, and so is a connection that stayed
        assert (await publisher.ping())["type"] == "pong"
        async with server.connect(tokens[1]) as fresh:
            assert (await fresh.ping())["type"] == "pong"
