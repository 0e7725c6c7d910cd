"""One WebSocket connection of a chat: commands out with fresh refs, replies matched back.

A `Request` outlives connections: it is the caller's command waiting for its reply. Each
time it is transmitted it gets a fresh `ref` on that connection (refs are per connection,
so a stale reply can never be matched to the wrong command); when the connection ends
unanswered, the request is woken without a result and the caller decides whether to send
it again on the next connection (`Chat` always does: every command it retries is
idempotent or read-only).

The `Session` reads every frame in one task and never blocks on the program: each event
is matched to its request or handed to the `SessionHandler` (the chat) synchronously, so
replies keep flowing even when the program stops reading its events.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from chat_actors.errors import ProtocolError
from chat_actors.protocol import decode_event, encode_command
from chat_actors.records import Command, ErrorEvent, Event, Message, Synced, Welcome

from .errors import ChatError, TooLarge, error_for

__all__ = ["Request", "Session", "SessionEnded", "SessionHandler"]

log = logging.getLogger(__name__)


class SessionEnded(Exception):
    """The connection ended before the request was answered (internal: never reaches a program)."""


@attrs.define(eq=False)
class Request:
    """A command waiting for one of `replies` (or an `error` with its ref).

    `build(ref)` makes the command afresh for each transmission, so a `join` sent again
    after a reconnect carries the `since` of that moment.
    """

    build: Callable[[int], Command]
    replies: tuple[type, ...]
    wake: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False
    value: Any = None
    error: ChatError | None = None
    #: the command as last transmitted (None: never sent yet)
    command: Command | None = None

    def resolve(self, value: Any) -> None:
        self.done, self.value = True, value
        self.wake.set()

    def fail(self, error: ChatError) -> None:
        self.done, self.error = True, error
        self.wake.set()

    def rearm(self) -> None:
        """Forget the last outcome before transmitting again."""
        self.done, self.value, self.error = False, None, None
        self.wake = trio.Event()


class SessionHandler(Protocol):
    """What the session hands over; every method is synchronous and must not block."""

    def on_welcome(self, session: Session, welcome: Welcome) -> None: ...

    def on_message(self, session: Session, message: Message) -> None: ...

    def on_reply(self, session: Session, request: Request, event: Event) -> None:
        """A reply matched `request`; called before the request's waiter wakes."""

    def on_other(self, session: Session, event: Event) -> None:
        """typing, read, presence, an `error` no request waits for, a late reply."""


class Session:
    """See the module docstring. `run()` reads until the connection ends."""

    def __init__(self, ws: WebSocketConnection, handler: SessionHandler) -> None:
        self.ws = ws
        self._handler = handler
        self._refs = itertools.count(1)
        self._waiting: dict[str | int, Request] = {}
        self.welcome: Welcome | None = None
        self.welcomed = trio.Event()
        self.synced = trio.Event()
        self.ended = trio.Event()
        #: the close code the server sent (1006: the TCP connection dropped without one)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.nursery: trio.Nursery | None = None
        #: set once every joined room was resumed on this connection; gaps are
        #: read from the store only from then on (before, the replays are still arriving)
        self.live = False
        self.live_since = 0.0

    @property
    def alive(self) -> bool:
        return not self.ended.is_set() and self.nursery is not None

    # ------------------------------------------------------------------ sending

    def _encode(self, cmd: Command) -> str:
        data = encode_command(cmd)
        if self.welcome is not None and len(data) > self.welcome.limits.max_frame_bytes:
            # The server would close the connection (1009) and a retry would do it again.
            raise TooLarge(f"the command is {len(data)} bytes, over the server's {self.welcome.limits.max_frame_bytes}")
        return data.decode()

    async def transmit(self, request: Request) -> None:
        """Send the request's command with a fresh ref; its reply, or the end of this
        connection, sets `request.wake`. Raises TooLarge (nothing sent) for an oversized frame.
        On cancellation the caller must `forget(request)`."""
        if self.ended.is_set():
            request.wake.set()
            return
        ref = next(self._refs)
        cmd = request.build(ref)
        text = self._encode(cmd)
        request.command = cmd
        self._waiting[ref] = request
        try:
            await self.ws.send_message(text)
        except ConnectionClosed:
            self._end()

    async def call(self, build: Callable[[int], Command], replies: tuple[type, ...]) -> Any:
        """Transmit and wait on this connection only; SessionEnded if it ends first."""
        request = Request(build, replies)
        try:
            await self.transmit(request)
            await request.wake.wait()
        finally:
            self.forget(request)
        if not request.done:
            raise SessionEnded()
        if request.error is not None:
            raise request.error
        return request.value

    async def send_oneway(self, build: Callable[[int], Command]) -> None:
        """A command without a reply (`typing`, `read`). It still carries a ref, so an
        `error` it causes reaches the program as an ErrorEvent with that ref."""
        if self.ended.is_set():
            return
        text = self._encode(build(next(self._refs)))
        try:
            await self.ws.send_message(text)
        except ConnectionClosed:
            self._end()

    def forget(self, request: Request) -> None:
        """Stop matching replies to `request` (its caller gave up)."""
        for ref in [ref for ref, r in self._waiting.items() if r is request]:
            del self._waiting[ref]

    # ------------------------------------------------------------------ receiving

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch frames until the connection ends; then wake every waiting request
        and cancel the session's nursery (its fillers and keepalive die with it)."""
        task_status.started()
        try:
            while True:
                data = await self.ws.get_message()
                if isinstance(data, bytes):
                    log.warning("ignoring a binary frame from the server (%d bytes)", len(data))
                    continue
                try:
                    event = decode_event(data)
                except ProtocolError as exc:
                    log.warning("ignoring a frame the client cannot decode: %s", exc.message)
                    continue
                self._dispatch(event)
        except ConnectionClosed as exc:
            if exc.reason is not None:
                self.close_code, self.close_reason = exc.reason.code, exc.reason.reason
        finally:
            self._end()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Message):
            self._handler.on_message(self, event)
            return
        ref = getattr(event, "ref", None)
        request = self._waiting.get(ref) if ref is not None else None
        if ref is not None and request is not None and isinstance(event, (ErrorEvent, *request.replies)):
            del self._waiting[ref]
            if isinstance(event, ErrorEvent):
                request.fail(error_for(event.code, event.message, ref=ref))
            else:
                self._handler.on_reply(self, request, event)
                request.resolve(event)
            return
        if isinstance(event, Welcome):
            self.welcome = event
            self._handler.on_welcome(self, event)
            self.welcomed.set()
        elif isinstance(event, Synced):
            self.synced.set()
        else:
            self._handler.on_other(self, event)

    def _end(self) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        waiting, self._waiting = self._waiting, {}
        for request in waiting.values():
            request.wake.set()
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def abort(self) -> None:
        """End the session now (the keepalive found the connection dead, or the chat closes)."""
        self._end()

    async def keepalive(self, interval: float, timeout: float) -> None:
        """A WebSocket ping every `interval`; no pong within `timeout` means the connection
        is dead even though TCP reports nothing (a half-open connection): end the session."""
        while not self.ended.is_set():
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as scope:
                try:
                    await self.ws.ping()
                except ConnectionClosed:
                    return
            if scope.cancelled_caught:
                log.info("no pong within %.1f s: the connection is dead, reconnecting", timeout)
                self.abort()
                return
