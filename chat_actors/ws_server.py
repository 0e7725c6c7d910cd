"""The WebSocket listener: accepts, upgrades (ws_handshake) and serves each connection.

Why apart from transport.py: a `WebSocket` is one connection's bytes, close handshake and
timers; this module owns the set of them. It runs one nursery per connection (one bad
connection never stops the rest), one timer sweep for every connection (pings, idle closes,
deadlines, resets nobody is waiting to hear about), and the graceful close of them all at
shutdown.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from .errors import CloseCode
from .transport import ConnectionClosed, TransportSettings, WebSocket
from .ws_handshake import Authenticate, accept_forever, hung_up, open_listener, perform_handshake

__all__ = ["Handler", "WsServer"]

log = logging.getLogger(__name__)

#: kernel send buffer floor (the kernel caps it at net.core.wmem_max)
_MIN_SNDBUF = 65536

Handler = Callable[[WebSocket], Awaitable[None]]


class WsServer:
    """The WebSocket listener: accepts, upgrades and runs `handler(ws)` per connection.

    Every connection runs in its own nursery inside the server's nursery; exceptions are
    caught (and logged) at that boundary only, so one bad connection never stops the rest.
    """

    def __init__(self, handler: Handler, *, host: str, port: int, settings: TransportSettings,
                 authenticate: Authenticate | None = None):
        self._handler = handler
        self._host = host
        self._port = port
        self._settings = settings
        self._authenticate = authenticate
        self._accept_scope = trio.CancelScope()
        self._all: set[WebSocket] = set()
        self._shutdown: tuple[int, float] | None = None

    @property
    def connections(self) -> frozenset[WebSocket]:
        """Connections past the handshake that are not closing."""
        return frozenset(ws for ws in self._all if not ws.closed)

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report (host, real port) through task_status, and serve until cancelled.

        After stop_accepting() existing connections are still served; cancellation drops
        every connection at once (close_all first for a graceful stop).
        """
        listener = await open_listener(self._host, self._port)
        try:
            port = listener.getsockname()[1]
            log.debug("websocket listener on %s:%d", self._host, port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep)
                task_status.started((self._host, port))
                with self._accept_scope:
                    await accept_forever(listener, partial(nursery.start_soon, self._serve))
                listener.close()
                await trio.sleep_forever()
        finally:
            listener.close()

    async def _sweep(self) -> None:
        """One timer task for every connection: heartbeats, idle closes, close_at deadlines,
        and peers that reset while their reader was not waiting on the socket."""
        heartbeat = self._settings.heartbeat_s
        period = min(0.5, heartbeat / 2) if heartbeat > 0 else 0.5
        while True:
            await trio.sleep(period)
            self._sweep_once(trio.current_time())

    def _sweep_once(self, now: float) -> None:
        """A function of its own, so no connection stays referenced between sweeps."""
        unwatched = []
        for ws in self._all:
            ws.tick(now)
            if ws.unwatched:
                unwatched.append(ws)
        if unwatched:                   # one poll(2) for all of them, nothing read
            for index in hung_up([ws.socket for ws in unwatched]):
                log.debug("ws %s: peer reset, dropping it", unwatched[index].id)
                unwatched[index].abort()

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections carry on."""
        self._accept_scope.cancel()

    async def close_all(self, code: int, timeout_s: float) -> None:
        """Close every connection with `code`, wait up to timeout_s for them, then drop the rest.

        Backlogs are flushed before the close frame within that time. Connections that finish
        their handshake afterwards are closed at once with the same code.
        """
        self._shutdown = (code, timeout_s)
        sockets = list(self._all)
        for ws in sockets:
            ws.start_close(code, "server shutting down", timeout_s, drop_inbound=True)
        with trio.move_on_after(timeout_s):
            for ws in sockets:
                await ws.wait_closed()
        for ws in sockets:
            ws.abort()
        for ws in sockets:
            await ws.wait_closed()

    async def _serve(self, sock: socket.socket, remote: str) -> None:
        settings = self._settings
        ws: WebSocket | None = None
        try:
            # Bound what the kernel holds for a client that stops reading (autotuning would let
            # it grow to megabytes), so the backlog limit -- and 4008 -- is reached in bounded memory.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(settings.send_queue_bytes, _MIN_SNDBUF))
            with trio.move_on_after(settings.handshake_timeout_s):
                accepted = await perform_handshake(
                    sock, remote, path=settings.path, allowed_origins=settings.allowed_origins,
                    max_request_bytes=settings.max_request_bytes, linger_s=settings.close_timeout_s,
                    authenticate=self._authenticate)
                if accepted is not None:
                    ws = WebSocket(sock, accepted[0], accepted[1], settings, accepted[2])
            if ws is None:
                log.debug("handshake from %s did not complete", remote)
                return
            self._all.add(ws)
            log.debug("ws %s: open from %s", ws.id, remote)
            if self._shutdown is not None:
                ws.start_close(self._shutdown[0], "server shutting down", self._shutdown[1],
                                drop_inbound=True)
            await ws.serve(self._run_handler)
        except OSError as exc:          # reset during the handshake and the like
            log.debug("connection from %s failed: %s", remote, exc)
        except Exception:
            log.exception("connection from %s failed", remote)
        finally:
            if ws is None:
                sock.close()
            else:
                self._all.discard(ws)
                log.debug("ws %s: closed %s", ws.id, ws.close_code)

    async def _run_handler(self, ws: WebSocket) -> None:
        try:
            await self._handler(ws)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("ws %s: handler failed", ws.id)
            ws.close(CloseCode.INTERNAL, "internal error")
            return
        ws.close(CloseCode.NORMAL)
