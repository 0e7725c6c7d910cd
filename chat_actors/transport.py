"""Server side of WebSocket: wsproto for the protocol, our own non-blocking sockets for the bytes.

Why not a WebSocket library: fan-out calls `deliver()` on every member of a room for every
event. That call must be synchronous and cheap, so it writes the pre-encoded frame straight
to the non-blocking socket when nothing is queued (no task switch, no await) and otherwise
appends it to a bounded backlog that the connection's writer task flushes when the socket is
writable. The connection is the single writer of its socket: pongs, pings and the close frame
take the same path, so bytes never interleave and a partially written frame is finished first.

wsproto parses inbound frames, does the close handshake and writes control frames, so its
state machine stays consistent. Outbound data frames are encoded once per event by
`frames.encode_text_frame`; wsproto does not track outbound data, so they are just bytes to
it. Small inbound text, ping and pong frames are parsed by `frames.parse_client_frames` until
the first frame it leaves to wsproto; from then on wsproto sees every byte.

The listener that accepts connections, runs the timer sweep over all of them and closes
them at shutdown is `ws_server.WsServer`; it drives a connection through `serve`, `tick`,
`start_close` and `abort`.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice

import attrs
import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from .errors import CloseCode
from .frames import encode_text_frame, parse_client_frames
from .mailbox import Mailbox
from .ws_handshake import (
    Authenticate,
    Handshake,
)

__all__ = ["Authenticate", "ConnectionClosed", "Handshake", "TransportSettings", "WebSocket"]

log = logging.getLogger(__name__)

_RECV_SIZE = 65536
_IOV_MAX = 64            # buffers per sendmsg() when flushing the backlog
_INBOX_SIZE = 8          # complete inbound messages buffered for the handler
_OPEN = ConnectionState.OPEN
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
_CLOSED = ConnectionState.CLOSED
# Shared by every connection with nothing queued (an empty deque costs ~760 bytes); it is
# only ever cleared, never appended to: _queue_rest gives a connection its own first.
_NO_BACKLOG: deque[bytes | memoryview] = deque()


@attrs.frozen
class TransportSettings:
    """Limits and timers of the WebSocket listener (seconds, bytes)."""

    max_frame_bytes: int = 65536        # inbound message payload limit, fragments summed -> 1009
    send_queue_bytes: int = 1048576     # outbound backlog limit -> 4008 (PROTOCOL 5 Backpressure)
    heartbeat_s: float = 30.0           # ping interval; 2x without any inbound frame -> 4000; 0: off
    handshake_timeout_s: float = 10.0
    allowed_origins: tuple[str, ...] = ()
    max_request_bytes: int = 16384      # upgrade request size -> 431
    close_timeout_s: float = 5.0        # wait for the peer's close frame, then drop TCP
    path: str = "/ws"


class ConnectionClosed(Exception):
    """The WebSocket is closed or closing; `code` is the close code of the handshake (1006: lost)."""

    def __init__(self, code: int | None, reason: str = ""):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class WebSocket:
    """One accepted connection. `deliver` may be called from any task of the same trio run
    (never from another thread); reading, timers and flushing are owned by its own tasks."""

    __slots__ = ("_backlog", "_backlog_bytes", "_close_at", "_close_code", "_close_deadline",
                 "_close_queued", "_close_reason", "_closed",
                 "_half", "_last_rx", "_limit", "_low_water", "_next_ping", "_nursery", "_open",
                 "_partial", "_peer_eof", "_rx_blocked", "_rx_failed", "_rx", "_rx_parts", "_rx_pending",
                 "_rx_watching", "_slow",
                 "_rx_size", "_scheduled_close", "_settings", "_shut_wr", "_sock",
                 "_trailing", "_writing", "_ws", "handshake", "id")

    def __init__(self, sock: socket.socket, ws: WSConnection, handshake: Handshake,
                 settings: TransportSettings, trailing: bytes = b""):
        self.id = secrets.token_hex(6)
        self.handshake = handshake
        self._sock = sock
        self._ws = ws
        self._settings = settings
        self._limit = settings.send_queue_bytes
        self._half = settings.send_queue_bytes // 2
        self._open = True
        self._backlog: deque[bytes | memoryview] = _NO_BACKLOG
        self._backlog_bytes = 0
        self._partial = False                # the backlog's head has been written in part
        self._writing = False                # a writer task is flushing the backlog
        self._nursery: trio.Nursery | None = None   # the connection's own, while it is served
        self._low_water: trio.Event | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._close_queued = False
        self._close_deadline = float("inf")
        self._closed = trio.Event()          # the TCP connection is gone
        self._rx: Mailbox[str | bytes] = Mailbox(_INBOX_SIZE)
        self._rx_failed = False              # wsproto reported a protocol error: parser is dead
        self._rx_blocked = False             # the reader waits for the handler, not the peer
        self._rx_watching = False            # the reader waits for input: the kernel wakes it on RST
        self._rx_parts: list = []            # fragments of the message being received
        self._rx_size = 0
        self._rx_pending = b""               # the start of a frame cut by the end of a read
        self._slow = False                   # every inbound byte goes to wsproto from now on
        self._peer_eof = False
        self._shut_wr = False
        self._last_rx = 0.0
        self._next_ping = float("inf")
        self._close_at = float("inf")        # close_at(): when the server closes it by itself
        self._scheduled_close: tuple[int, str] = (CloseCode.NORMAL, "")
        self._trailing = trailing

    def __repr__(self) -> str:
        return f"<WebSocket {self.id} {self.handshake.remote} backlog={self._backlog_bytes}>"

    # --- public surface -------------------------------------------------------------------

    @property
    def backlog_bytes(self) -> int:
        """Bytes accepted but not yet taken by the kernel."""
        return self._backlog_bytes

    @property
    def closed(self) -> bool:
        """True once closing has begun: no more frames are accepted."""
        return not self._open

    @property
    def close_code(self) -> int | None:
        return self._close_code

    # --- what the listener (ws_server.WsServer) drives ---------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The TCP socket, for the listener's poll for resets; only this object writes to it."""
        return self._sock

    @property
    def unwatched(self) -> bool:
        """True while nobody waits on the socket, so the kernel would not tell us of a reset:
        the reader waits for the handler (a full inbox) and the connection is not yet gone."""
        return not self._rx_watching and not self._closed.is_set()

    def deliver(self, frame: bytes, *, durable: bool) -> bool:
        """Send one pre-encoded frame without blocking; False if it was not accepted.

        Empty backlog: written straight to the socket, the rest (if any) queued. Otherwise
        queued behind the backlog, unless a durable frame would push it over
        send_queue_bytes (the connection is evicted with 4008) or the frame is ephemeral and
        the backlog is over half full (dropped).
        """
        if not self._open:
            return False
        backlog = self._backlog
        if backlog:
            queued = self._backlog_bytes + len(frame)
            if queued > self._limit:
                if durable:
                    self._evict()
                return False
            if not durable and self._backlog_bytes > self._half:
                return False
            backlog.append(frame)
            self._backlog_bytes = queued
            return True
        try:
            sent = self._sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return False
        if sent < len(frame):
            self._queue_rest(frame, sent)
        return True

    def send_event_bytes(self, payload: bytes, *, durable: bool = True) -> bool:
        """Frame a JSON payload as text and deliver it (for events sent to one connection only)."""
        return self.deliver(encode_text_frame(payload), durable=durable)

    async def send_paced(self, frame: bytes) -> None:
        """Deliver a durable frame the client asked for, waiting until the backlog is <= half.

        Never evicts a client that keeps reading: once there is room, the frame is queued
        even if it alone exceeds the limit. Raises ConnectionClosed if the connection closes
        meanwhile. Cancellation while waiting leaves nothing queued.
        """
        await trio.lowlevel.checkpoint()
        while self._open and self._backlog_bytes > self._half:
            if self._low_water is None:
                self._low_water = trio.Event()
            await self._low_water.wait()
        if not self._open:
            raise ConnectionClosed(self._close_code, self._close_reason)
        self._write(frame)

    async def receive(self) -> str | bytes:
        """The next complete message: str for text, bytes for binary.

        Raises ConnectionClosed(code, reason) once the connection is closing and the
        messages received before that have been returned.
        """
        try:
            return await self._rx.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self._close_code, self._close_reason) from None

    def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake (idempotent, never blocks); unread inbound is discarded."""
        self.start_close(code, reason, self._settings.close_timeout_s, drop_inbound=True)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone."""
        await self._closed.wait()

    def close_at(self, when: float, code: int, reason: str) -> None:
        """Close with `code` once trio.current_time() reaches `when` (e.g. a token's expiry).

        Checked by the listener's timer sweep (at least every heartbeat interval, at most
        every 0.5 s), so the connection needs no timer task of its own.
        """
        self._close_at = when
        self._scheduled_close = (code, reason)

    # --- sending ----------------------------------------------------------------------------

    def _queue_rest(self, data: bytes | memoryview, sent: int) -> None:
        if self._backlog is _NO_BACKLOG:
            self._backlog = deque()
        self._backlog.append(memoryview(data)[sent:] if sent else data)
        self._partial = sent > 0
        self._backlog_bytes += len(data) - sent
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    def _write(self, data: bytes) -> None:
        """Queue bytes with no limit check (control frames, paced frames): same single writer."""
        if self._backlog:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self._queue_rest(data, sent)

    def _flush(self) -> bool:
        """Write what the socket takes; True when the backlog is empty (or the socket failed)."""
        backlog = self._backlog
        sock = self._sock
        while backlog:
            try:
                if len(backlog) == 1:
                    sent = sock.send(backlog[0])
                else:
                    sent = sock.sendmsg(list(islice(backlog, _IOV_MAX)))
            except BlockingIOError:
                return False
            except OSError:
                self.abort()
                return True
            self._backlog_bytes -= sent
            while sent:
                head = backlog[0]
                size = len(head)
                if sent >= size:
                    backlog.popleft()
                    self._partial = False
                    sent -= size
                else:
                    backlog[0] = memoryview(head)[sent:]
                    self._partial = True
                    return False        # the kernel buffer is full: wait until writable
        return True

    async def _writer(self) -> None:
        """Flush the backlog as the socket drains, then end: a task exists only under backpressure."""
        sock = self._sock
        try:
            while not self._flush():
                self._notify_low_water()
                await trio.lowlevel.wait_writable(sock)
        except trio.ClosedResourceError:
            return                      # torn down meanwhile (_finish)
        finally:
            self._writing = False
        self._backlog = _NO_BACKLOG     # drained: give the buffer back
        self._notify_low_water()
        self._check_finish()

    def _notify_low_water(self) -> None:
        event = self._low_water
        if event is not None and (self._backlog_bytes <= self._half or not self._open):
            self._low_water = None
            event.set()

    # --- closing ----------------------------------------------------------------------------

    def start_close(self, code: int, reason: str, timeout_s: float, *, drop_inbound: bool) -> None:
        if not self._open:
            return
        self._open = False
        self._close_code = code
        self._close_reason = reason
        self._close_deadline = trio.current_time() + timeout_s
        if drop_inbound:
            self._rx.close_receive()
        self._notify_low_water()
        if self._ws.state in (_OPEN, _REMOTE_CLOSING):
            self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._close_queued = True
        self._check_finish()

    def _evict(self) -> None:
        """4008: drop the backlog (but finish a frame already on the wire), then close."""
        log.info("ws %s: slow consumer, backlog %d bytes, closing 4008", self.id, self._backlog_bytes)
        backlog = self._backlog
        head = backlog[0] if self._partial and backlog else None
        backlog.clear()
        self._backlog_bytes = 0
        if head is not None:
            backlog.append(head)
            self._backlog_bytes = len(head)
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def _check_finish(self) -> None:
        """Once our close frame is flushed: done if the handshake is complete, else half-close."""
        if self._backlog or not self._close_queued:
            return
        if self._ws.state is _CLOSED or self._peer_eof:
            self._finish()
        elif self._rx_failed and not self._shut_wr:
            self._shut_wr = True        # the parser is dead: we cannot read their close frame
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now (peer gone, socket error, timeout) and end the session.

        Nothing the peer sent can be answered any more, so unread inbound is discarded and
        the connection's nursery is cancelled: the handler stops wherever it waits (a room's
        reply, a full room inbox, the store, send_paced), not only in receive(), and runs its
        `finally` blocks (shield what must still happen there).
        """
        if self._close_code is None:
            self._close_code = 1006
        self._open = False
        self._backlog.clear()
        self._backlog_bytes = 0
        self._rx.close_receive()
        self._finish()
        self._notify_low_water()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _finish(self) -> None:
        """Tear the TCP connection down (the close handshake is over, or it was abandoned).

        Nothing is left to write by then. Waits on the socket end with ClosedResourceError,
        and the handler sees the end of its inbound messages once it has read the ones that
        came before, so teardown never waits for the handler.
        """
        if self._closed.is_set():
            return
        self._rx.close_send()
        sock = self._sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self._closed.set()

    # --- receiving --------------------------------------------------------------------------

    async def _reader(self) -> None:
        sock = self._sock
        data = self._trailing
        self._trailing = b""
        try:
            while True:
                if data:
                    await self._feed(data)
                    if self._closed.is_set():
                        return          # the feed finished the close handshake (_finish)
                    if len(data) < _RECV_SIZE:      # most likely drained: wait, skip a failing recv
                        data = b""
                        if not await self._wait_readable():
                            return      # torn down (_finish)
                    else:
                        await trio.lowlevel.checkpoint()
                try:
                    data = sock.recv(_RECV_SIZE)
                except BlockingIOError:
                    data = b""
                    if not await self._wait_readable():
                        return          # torn down (_finish)
                    continue
                except OSError:
                    self.abort()
                    return
                if not data:
                    self._peer_eof = True
                    if self._close_queued:
                        self._check_finish()
                    else:
                        self.abort()
                    return
        finally:
            self._rx.close_send()

    async def _wait_readable(self) -> bool:
        """Wait for input; False once the socket is torn down.

        While the reader waits here, a reset wakes it (recv fails: abort). Anywhere else --
        waiting for the handler, or working through input that arrived before the reset
        (Linux keeps it readable and reports ECONNRESET only after it) -- the sweep asks the
        kernel instead (`hung_up`).
        """
        self._rx_watching = True
        try:
            await trio.lowlevel.wait_readable(self._sock)
        except trio.ClosedResourceError:
            return False
        finally:
            self._rx_watching = False
        return True

    async def _feed(self, data: bytes) -> None:
        if self._rx_failed or self._ws.state is _CLOSED:
            return                      # draining until EOF after a protocol error
        if not self._slow:
            data = await self._feed_fast(data)
            if not data:
                self._last_rx = trio.current_time()
                return
        ws = self._ws
        ws.receive_data(data)
        limit = self._settings.max_frame_bytes
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                if not self._open:
                    continue            # closing: data is discarded
                chunk = event.data
                size = self._rx_size + (len(chunk) if kind is BytesMessage or chunk.isascii()
                                        else len(chunk.encode()))
                if size > limit:
                    self._rx_parts.clear()
                    self._rx_size = 0
                    self.start_close(CloseCode.TOO_BIG, "message too big",
                                      self._settings.close_timeout_s, drop_inbound=False)
                elif event.message_finished:
                    parts = self._rx_parts
                    if parts:
                        parts.append(chunk)
                        chunk = ("" if kind is TextMessage else b"").join(parts)
                        parts.clear()
                    self._rx_size = 0
                    await self._hand_over(chunk)
                else:
                    self._rx_parts.append(chunk)
                    self._rx_size = size
            elif kind is Ping:          # a pong is ephemeral: a ping flood cannot grow the backlog
                if ws.state is _OPEN:
                    self.deliver(ws.send(event.response()), durable=False)
            elif kind is CloseConnection:
                self._on_close(event)
                break
        self._last_rx = trio.current_time()

    async def _feed_fast(self, data: bytes) -> bytes:
        """Take what `parse_client_frames` parses; return what goes to wsproto (b"" if none).

        A frame cut by the end of a read waits for the next one. Once the parser hands a
        frame to wsproto, `_slow` sends every later byte of the connection there too.
        """
        if self._rx_pending:
            data = self._rx_pending + data
        messages, rest, fallback = parse_client_frames(data, self._settings.max_frame_bytes)
        if fallback:
            self._slow = True
            self._rx_pending = b""
        else:
            self._rx_pending, rest = rest, b""
        for message in messages:
            if type(message) is str:
                if self._open:
                    await self._hand_over(message)
            elif self._ws.state is _OPEN:   # a ping's payload
                self.deliver(self._ws.send(Pong(message)), durable=False)
        return rest

    async def _hand_over(self, message: str | bytes) -> None:
        try:
            if self._rx.put_nowait(message):
                return                  # the usual case: no schedule point
            self._rx_blocked = True
            await self._rx.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass                        # the handler closed the connection; drop
        finally:
            self._rx_blocked = False
            self._last_rx = trio.current_time()

    def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is _REMOTE_CLOSING:    # the peer started the close handshake: echo its code
            self.start_close(event.code, event.reason, self._settings.close_timeout_s,
                              drop_inbound=False)
        elif state is _OPEN:            # a ParseFailed reported as an event; the state is unchanged
            self._rx_failed = True
            log.debug("ws %s: protocol error %s %s", self.id, event.code, event.reason)
            self.start_close(event.code, event.reason, self._settings.close_timeout_s,
                              drop_inbound=False)
        elif state is _LOCAL_CLOSING:   # protocol error while we wait for their close frame
            self._rx_failed = True
        self._check_finish()

    # --- timers and lifetime ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Timers, run by the listener's sweep: ping every heartbeat, 4000 when idle, close_at."""
        if not self._open:
            if now >= self._close_deadline and not self._closed.is_set():
                self.abort()           # the peer never answered our close frame
            return
        if now >= self._close_at:
            self.close(*self._scheduled_close)
            return
        interval = self._settings.heartbeat_s
        if interval <= 0:
            return
        if self._rx_blocked:
            self._last_rx = now         # our handler is slow, not the peer
        elif now >= self._last_rx + 2 * interval:
            log.info("ws %s: idle for %.1fs, closing 4000", self.id, now - self._last_rx)
            self.close(CloseCode.IDLE, "idle")
            return
        if now >= self._next_ping:
            if self._ws.state is _OPEN:
                self._write(self._ws.send(Ping()))
            self._next_ping = now + interval

    async def serve(self, handler: Callable[[WebSocket], Awaitable[None]]) -> None:
        """Reader task beside the handler (run in this task); returns when the TCP connection is gone.

        The writer task is started only while a backlog exists, and timers live in the
        listener's sweep: an idle connection costs one task besides this one.
        """
        now = trio.current_time()
        self._last_rx = now
        if self._settings.heartbeat_s > 0:
            self._next_ping = now + self._settings.heartbeat_s
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                if self._backlog and not self._writing:
                    self._writing = True
                    nursery.start_soon(self._writer)
                await handler(self)     # it closes the connection before it returns
                with trio.move_on_at(self._close_deadline):
                    await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.abort()
