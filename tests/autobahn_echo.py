"""Echo server on chat_actors.transport for the Autobahn cases (tests/test_autobahn.py).

Run as `python tests/autobahn_echo.py [port]`; prints `listening <port>` on stdout once bound.
Text is echoed as text, binary as binary, one message per message received (fragments joined).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_actors.frames import encode_binary_frame, encode_text_frame
from chat_actors.transport import ConnectionClosed, TransportSettings, WebSocket
from chat_actors.ws_server import WsServer

#: Section 9 sends 16 MiB messages; the backlog must hold a whole echo of one.
SETTINGS = TransportSettings(max_frame_bytes=16 * 1024 * 1024 + 1024,
                             send_queue_bytes=64 * 1024 * 1024,
                             heartbeat_s=0, close_timeout_s=5.0)


async def echo(ws: WebSocket) -> None:
    """Send every message back; the paced send keeps the backlog bounded for big messages."""
    while True:
        try:
            message = await ws.receive()
        except ConnectionClosed:
            return
        if isinstance(message, str):
            frame = encode_text_frame(message.encode())
        else:
            frame = encode_binary_frame(message)
        await ws.send_paced(frame)


async def main(port: int) -> None:
    server = WsServer(echo, host="127.0.0.1", port=port, settings=SETTINGS)
    async with trio.open_nursery() as nursery:
        _host, bound = await nursery.start(server.run)
        print(f"listening {bound}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
