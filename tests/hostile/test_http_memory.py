"""Big request bodies cost the server no memory (PROTOCOL section 8), measured on a subprocess.

Before, every handler did `await request.body()` and looked at the size afterwards: one 200 MB
POST grew the server by hundreds of MB, and a client that declared 10 GiB, sent 100 MB and went
quiet kept that memory for as long as it kept the connection. Now a declared length over
`max_frame_bytes` is refused from the headers, a streamed body at the limit, and the connection
is closed; the server's peak RSS is measured around each attack (tests/proc.py).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from proc import ServerProcess, start_server

MB = 1 << 20
#: generous: the fix costs well under 1 MB; the bug cost the whole body
MAX_GROWTH_KIB = 50 * 1024
WAIT = 30.0


@pytest.fixture
async def proc(tmp_path: Path):
    server = await start_server(tmp_path)
    try:
        yield server
    finally:
        await server.stop()


async def _connect(server: ServerProcess) -> trio.SocketStream:
    parts = urlsplit(server.http_url)
    return await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)


async def _attack(server: ServerProcess, head: bytes, chunks: int, *, chunked: bool) -> tuple[bytes, int]:
    """Send `head`, then up to `chunks` MB of body while reading; then wait (silent) for the
    server to close. Returns (what the server sent, bytes of body it took)."""
    stream = await _connect(server)
    received = bytearray()
    sent = 0
    piece = b"x" * MB
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece

    async def send_body() -> None:
        nonlocal sent
        try:
            await stream.send_all(head)
            for _ in range(chunks):
                await stream.send_all(frame)
                sent += MB
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed: exactly what it should do

    async with stream:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body)
                while True:  # after the body, the client stays silent: only the server ends this
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        break
                    if not data:
                        break
                    received += data
                nursery.cancel_scope.cancel()
    return bytes(received), sent


def _answered_413_or_closed(received: bytes) -> bool:
    return received == b"" or received.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("path", ["/api/register", "/api/login"])
async def test_200mb_chunked_body_is_refused_without_buffering(proc: ServerProcess, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    await trio.sleep(0.2)  # let startup allocations settle before the baseline
    proc.reset_peak()
    base = proc.rss_kib()
    received, sent = await _attack(proc, head, 200, chunked=True)
    growth = proc.peak_kib() - base
    assert _answered_413_or_closed(received), received[:300]
    assert growth < MAX_GROWTH_KIB, f"peak RSS grew by {growth} KiB for a body of {sent} bytes"
    assert proc.alive()


async def test_declared_10gib_body_sent_in_part_then_silence(proc: ServerProcess) -> None:
    """100 MB of a declared 10 GiB, then the client goes quiet and waits: the server must have
    answered from the headers and closed, holding nothing."""
    head = (f"POST /api/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 << 30}\r\n\r\n").encode()
    await trio.sleep(0.2)
    proc.reset_peak()
    base = proc.rss_kib()
    received, sent = await _attack(proc, head, 100, chunked=False)
    growth = proc.peak_kib() - base
    assert _answered_413_or_closed(received), received[:300]
    assert growth < MAX_GROWTH_KIB, f"peak RSS grew by {growth} KiB for {sent} bytes sent"
    assert proc.alive()


async def test_publish_with_token_and_200mb_body(proc: ServerProcess) -> None:
    """The authenticated publish path too (it authenticates before it reads the body)."""
    import httpx

    from integration.client import make_token

    async with httpx.AsyncClient(base_url=proc.http_url, timeout=WAIT) as h:
        r = await h.post("/api/register", json={"username": "alice", "password": "correct-horse-battery"})
        assert r.status_code == 201, r.text
    token = make_token(proc.secret, "alice")
    head = ("POST /api/rooms/general/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    await trio.sleep(0.2)
    proc.reset_peak()
    base = proc.rss_kib()
    received, sent = await _attack(proc, head, 200, chunked=True)
    growth = proc.peak_kib() - base
    assert _answered_413_or_closed(received), received[:300]
    assert growth < MAX_GROWTH_KIB, f"peak RSS grew by {growth} KiB for a body of {sent} bytes"
    async with httpx.AsyncClient(base_url=proc.http_url, timeout=WAIT) as h:
        assert (await h.get("/healthz")).status_code == 200

