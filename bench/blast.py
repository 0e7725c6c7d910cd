"""Blast server: measures the generator's own ceiling.

Pinned to the server core, it answers a client's `go <ms>` text frame by writing
pre-framed load messages to that client for that long, 64 frames per write, as fast as
the socket drains. It does no per-recipient work worth the name, so the rate at which the
generator takes those frames in is the most the generator can receive: any result near it
is the generator's limit, not the server's. `--shape ours` sends frames shaped like the
chat server's `message` events, `--shape raw` the bare text the peer relays.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

_CHUNK = 64                     # frames per write: large reads, the generator's best case


def _frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + struct.pack("!H", size) + payload
    return b"\x81\x7f" + struct.pack("!Q", size) + payload


class Blaster(WSListener):
    def __init__(self, shape: str, size: int, ident: int) -> None:
        self.shape = shape
        self.pad = b"x" * size
        self.ident = ident
        self.n = 0
        self.paused = False
        self.resumed: asyncio.Event = asyncio.Event()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b"go "):
                asyncio.get_running_loop().create_task(self.blast(int(payload[3:]) / 1000))

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    def _chunk(self) -> bytes:
        now = time.monotonic_ns()
        frames = []
        for _ in range(_CHUNK):
            self.n += 1
            marker = b"~b%d:%d:%d~" % (self.ident, self.n, now)
            text = marker + self.pad[len(marker):]
            if self.shape == "ours":
                payload = (b'{"type":"message","room":"bench","seq":%d,"id":"b%d.%d.%d","from":"blast",'
                           b'"text":"%s","ts":1700000000000}' % (self.n, self.ident, self.n, now, text))
            else:
                payload = text
            frames.append(_frame(payload))
        return b"".join(frames)

    async def blast(self, seconds: float) -> None:
        assert self.transport is not None
        raw = self.transport.underlying_transport
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.transport.is_disconnected:
            if self.paused:
                try:
                    await asyncio.wait_for(self.resumed.wait(), max(0.0, end - time.monotonic()))
                except TimeoutError:
                    break
                continue
            raw.write(self._chunk())
            await asyncio.sleep(0)


async def _main(shape: str, size: int) -> None:
    counter = iter(range(1, 1 << 30))
    server = await ws_create_server(lambda request: Blaster(shape, size, next(counter)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"blast listening ws://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=("ours", "raw"), default="ours")
    parser.add_argument("--size", type=int, default=200)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(_main(args.shape, args.size))
    except ImportError:
        asyncio.run(_main(args.shape, args.size))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
