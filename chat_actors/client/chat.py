"""`open_chat`: one chat connection that outlives disconnects, server restarts and slow programs.

What the program gets beyond the raw protocol:

* **Reconnects** with exponential backoff and jitter after a drop, a 1001 (server shutting
  down), 4008 (slow consumer), any other close or a dead connection found by the keepalive.
  4001 (and an upgrade refused with 401) ends the chat with `Unauthorized`: the token is bad
  or expired, so the program must log in again; so do 400/403/404 upgrade refusals.
* **Resume**: every joined room is joined again with `since` = the last seq handed to the
  program; when the server answers `recovered: false` (more than 1,000 missed) the gap is
  read with `history after=` pages before the room's live messages continue.
* **Sends retried** with their original id on every new connection until acked (or the
  caller's cancel scope ends the wait); the server's idempotent send makes that safe.
* **Each room's stream is gap-free and duplicate-free**: `events()` yields a room's messages
  exactly once each, in seq order, the program's own included (built from its acks), so
  a room's stream equals its history. Direct rooms too: offline direct messages replayed
  after every `welcome` appear once.
* **Errors** are exceptions named for the protocol codes (`errors.py`); `rate_limited` and
  `unavailable` answers are waited out and sent again by default (`retry_busy`).
* **Bounded buffers**: see `delivery.py` (events) and `ChatOptions` (pending sends).

The chat runs its connection loop (`connector.py`) in the nursery that `open_chat` opens;
the program's calls wait for a live session and never touch the socket of a dead one.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from chat_actors.protocol import parse_dm_room
from chat_actors.records import (
    Ack, Command, Dm, ErrorEvent, Event, History, HistoryPage, Join, Joined, Leave, Left, Message, PresenceEvent,
    PresenceList, PresenceQuery, Read, ReadEvent, Send, Typing, TypingEvent, Welcome,
)

from .api import new_message_id
from .connector import Connector
from .delivery import HISTORY_PAGE, Delivery
from .errors import ChatClosed, ChatError, RateLimited, Unavailable
from .options import ChatOptions, ChatStatistics
from .session import Request, Session, SessionEnded

__all__ = ["Chat", "open_chat"]

log = logging.getLogger(__name__)

#: Rooms joined again at once after a reconnect.
REJOIN_CONCURRENCY = 16
#: How long closing the chat may take before its tasks are cancelled.
CLOSE_TIMEOUT_S = 5.0


class Chat:
    """A chat connection; made by `open_chat`, which runs it. See the module docstring."""

    def __init__(self, url: str, *, token: str, options: ChatOptions | None = None) -> None:
        self.url = url
        self._options = options or ChatOptions()
        hooks = _Hooks(self)
        self._connector = Connector(url, token, self._options, handler=hooks, owner=hooks)
        self._delivery = Delivery(
            buffer_size=self._options.buffer_size, hold_limit=self._options.hold_limit,
            fetch=self._fetch_page, direct_messages=self._options.direct_messages,
        )
        self._send_slots = trio.Semaphore(self._options.max_pending_sends)
        self._live: Session | None = None
        self._changed = trio.Event()
        self._failure: ChatError | None = None
        self._closed = False
        self._resent = 0
        #: the `welcome` of the latest connection (rooms with their seq and read cursor)
        self.welcome: Welcome | None = None

    # ------------------------------------------------------------------ state

    @property
    def user(self) -> str:
        """The username the token belongs to (known once `open_chat` has returned)."""
        assert self.welcome is not None, "not connected yet"
        return self.welcome.user

    @property
    def connected(self) -> bool:
        """A connection is up and every joined room resumed on it."""
        return self._live is not None

    def statistics(self) -> ChatStatistics:
        """Counters for logs and tests: connections, buffer use, gap fills, resent commands."""
        return ChatStatistics(
            connects=self._connector.connects, live=self._live is not None, buffered_events=self._delivery.buffered,
            dropped_events=self._delivery.dropped, history_pages=self._delivery.history_pages, resent=self._resent,
        )

    # ------------------------------------------------------------------ commands

    async def join(self, room: str, *, since: int | None = None) -> Joined:
        """Join `room` (a public one is created) and follow it in `events()` from then on, or
        from after seq `since` (replayed first). `since` only matters for the first join of a
        room: a room already followed continues where it is. Resumed after every reconnect."""
        self._check_open()
        stream = self._delivery.streams.get(room)
        new = stream is None
        if stream is None:
            stream = self._delivery.track(room, last=since)
        was_joined, stream.joined = stream.joined, True
        try:
            return await self._call(lambda ref: Join(room, since=stream.last, ref=ref), (Joined,))
        except BaseException:
            if new:
                self._delivery.untrack(room)
            else:
                stream.joined = was_joined
            raise

    async def leave(self, room: str) -> Left:
        """Leave `room`: it is no longer followed (events already buffered stay) and the
        user's membership of a public room ends."""
        self._check_open()
        stream = self._delivery.streams.get(room)
        if stream is not None:
            if parse_dm_room(room) is not None and self._options.direct_messages:
                stream.joined = False  # direct messages keep arriving, joined or not
            else:
                self._delivery.untrack(room)
        return await self._call(lambda ref: Leave(room, ref=ref), (Left,))

    async def send(self, room: str, text: str, *, id: str | None = None, meta: dict[str, Any] | None = None) -> Ack:
        """Publish to a joined room; returns once the server acked it (it is then durable).

        Sent again with the same `id` on every new connection until acked, so bound the wait
        with a cancel scope (`with trio.fail_after(10): ...`) if it must not outlast an outage.
        After a cancellation the outcome is unknown; calling again with the same `id` is safe.
        """
        message_id = id or new_message_id()
        async with self._send_slots:
            return await self._call(lambda ref: Send(room, message_id, text, meta, ref), (Ack,))

    async def dm(self, to: str, text: str, *, id: str | None = None, meta: dict[str, Any] | None = None) -> Ack:
        """A direct message to user `to` (no join needed); the ack's `room` is `dm:<a>:<b>`."""
        message_id = id or new_message_id()
        async with self._send_slots:
            return await self._call(lambda ref: Dm(to, message_id, text, meta, ref), (Ack,))

    async def history(self, room: str, *, before: int | None = None, after: int | None = None,
                      limit: int = 50) -> HistoryPage:
        """A page of stored messages (PROTOCOL section 5 `history`); needs no join on public rooms."""
        return await self._call(lambda ref: History(room, before, after, limit, ref), (HistoryPage,))

    async def presence(self, room: str) -> PresenceList:
        """Who is in `room` now, with their connection counts."""
        return await self._call(lambda ref: PresenceQuery(room, ref=ref), (PresenceList,))

    async def read(self, room: str, seq: int) -> None:
        """Move the read cursor of `room` to `seq` (also confirms direct messages, so they are
        not replayed at the next connection). Waits for a connection; no reply."""
        session = await self._live_session()
        await session.send_oneway(lambda ref: Read(room, seq, ref))

    async def typing(self, room: str) -> None:
        """Tell the room the user is typing; dropped while disconnected (it is ephemeral)."""
        self._check_open()
        if self._live is not None:
            await self._live.send_oneway(lambda ref: Typing(room, ref))

    def events(self) -> AsyncIterator[Event]:
        """Messages, typing, read and presence events, and errors no call was waiting for.

        Ends when the chat is closed; raises the chat's failure (Unauthorized, or
        ConnectionFailed after `give_up_after`) once the buffered events are consumed.
        Meant for one consumer: several would share out the events between them.
        """
        return _EventStream(self)

    async def aclose(self) -> None:
        """Close the connection (1000) and end `events()`; pending calls raise ChatClosed."""
        if not self._closed:
            self._closed = True
            self._connector.close()
            self._delivery.close()
            self._notify()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._connector.stopped.wait()

    # ------------------------------------------------------------------ calls

    def _check_open(self) -> None:
        if self._failure is not None:
            raise copy.copy(self._failure)
        if self._closed:
            raise ChatClosed("the chat is closed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _live_session(self) -> Session:
        """The live session; waits while there is none (or the live one is ending: its
        end is reported a moment after its requests are woken)."""
        while True:
            self._check_open()
            if self._live is not None and not self._live.ended.is_set():
                return self._live
            await self._changed.wait()

    async def _call(self, build: Callable[[int], Command], replies: tuple[type, ...]) -> Any:
        """Send until answered: again on each new connection, again after a busy answer."""
        request = Request(build, replies)
        busy = 0
        while True:
            session = await self._live_session()
            if request.command is not None:
                self._resent += 1
            try:
                await session.transmit(request)
                await request.wake.wait()
            except BaseException:
                session.forget(request)
                raise
            if not request.done:  # the connection ended unanswered
                request.rearm()
                continue
            error = request.error
            if error is None:
                return request.value
            if self._options.retry_busy and isinstance(error, (RateLimited, Unavailable)):
                await trio.sleep(self._busy_delay(error, busy))
                busy += 1
                request.rearm()
                continue
            raise error

    def _busy_delay(self, error: ChatError, attempt: int) -> float:
        """Wait out `rate_limited` for about one token's refill (doubling while it repeats),
        `unavailable` like a reconnect."""
        if isinstance(error, RateLimited):
            rate = self.welcome.limits.rate_per_second if self.welcome else 1.0
            base = max(error.retry_after or 0.0, 1.0 / rate)
            return min(10.0, base * 2 ** min(attempt, 6)) * random.uniform(1.0, 1.5)
        return self._options.backoff.delay(attempt)

    async def _call_on(self, session: Session, build: Callable[[int], Command], replies: tuple[type, ...]) -> Any:
        """A command of the library's own on this connection only (SessionEnded when it
        ends), busy answers waited out whatever `retry_busy` says: the program did not ask."""
        busy = 0
        while True:
            try:
                return await session.call(build, replies)
            except (RateLimited, Unavailable) as exc:
                await trio.sleep(self._busy_delay(exc, busy))
                busy += 1

    async def _fetch_page(self, session: Session, room: str, after: int) -> HistoryPage:
        """A gap-filling page (the resume after a reconnect starts filling again from `last`)."""
        return await self._call_on(session, lambda ref: History(room, after=after, limit=HISTORY_PAGE, ref=ref),
                                   (HistoryPage,))

    # ------------------------------------------------------------------ what the session reports

    def _on_welcome(self, session: Session, welcome: Welcome) -> None:
        self.welcome = welcome
        for entry in welcome.rooms:
            stream = self._delivery.streams.get(entry.room)
            if stream is not None:
                stream.see_head(entry.seq)
            elif self._options.direct_messages and parse_dm_room(entry.room) is not None:
                # offline delivery replays what is above the read cursor: start there
                self._delivery.track(entry.room, last=entry.read, head=entry.seq)

    def _on_message(self, session: Session, message: Message) -> None:
        self._delivery.offer(session, message)

    def _on_reply(self, session: Session, request: Request, event: Event) -> None:
        if type(event) is Joined:
            stream = self._delivery.streams.get(event.room)
            if stream is not None:
                if not stream.on_joined(event.seq):
                    log.warning("%s holds %d messages, fewer than this chat has seen: the server lost messages;"
                                " the stream goes on from there", event.room, event.seq)
                self._delivery.pump(session, stream, grace=False)
        elif type(event) is Ack:
            cmd = request.command
            if isinstance(cmd, (Send, Dm)) and session.welcome is not None:
                own = Message(event.room, event.seq, event.id, session.welcome.user, cmd.text, cmd.meta, event.ts)
                self._delivery.offer(session, own)

    def _on_other(self, session: Session, event: Event) -> None:
        if isinstance(event, (TypingEvent, ReadEvent, PresenceEvent, ErrorEvent)):
            self._delivery.ephemeral(event)

    # ------------------------------------------------------------------ what the connection loop reports

    async def _resume(self, session: Session) -> None:
        """Join every followed room again, from where its stream stands."""
        rooms = [s.room for s in self._delivery.streams.values() if s.joined and s.confirmed]
        limiter = trio.CapacityLimiter(REJOIN_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for room in rooms:
                nursery.start_soon(self._rejoin, session, room, limiter)

    async def _rejoin(self, session: Session, room: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            stream = self._delivery.streams.get(room)
            if stream is None or not stream.joined:
                return  # left meanwhile
            try:
                await self._call_on(session, lambda ref: Join(room, since=stream.last, ref=ref), (Joined,))
            except SessionEnded:
                pass
            except ChatError as exc:  # forbidden now, or over the room cap
                self._delivery.problem(room, exc)

    def _session_live(self, session: Session) -> None:
        for stream in list(self._delivery.streams.values()):
            self._delivery.pump(session, stream, grace=False)  # gaps are read from the store now
        self._live = session
        self._notify()

    def _session_down(self, session: Session) -> None:
        if self._live is session:
            self._live = None
            self._notify()

    def _failed(self, error: ChatError) -> None:
        if self._failure is None:
            log.info("chat to %s failed: %s", self.url, error)
            self._failure = error
            self._delivery.close()
            self._notify()


class _Hooks:
    """The chat as its session (SessionHandler) and connection loop (ConnectorOwner) see it,
    kept off `Chat`'s public surface."""

    def __init__(self, chat: Chat) -> None:
        self.on_welcome = chat._on_welcome
        self.on_message = chat._on_message
        self.on_reply = chat._on_reply
        self.on_other = chat._on_other
        self.resume = chat._resume
        self.session_live = chat._session_live
        self.session_down = chat._session_down
        self.failed = chat._failed


class _EventStream:
    """`async for event in chat.events()` (a plain iterator: no async-generator finalisation)."""

    def __init__(self, chat: Chat) -> None:
        self._chat = chat

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._chat._delivery.receive()
        except trio.EndOfChannel:
            if self._chat._failure is not None:
                raise copy.copy(self._chat._failure) from None
            raise StopAsyncIteration from None


@asynccontextmanager
async def open_chat(url: str, *, token: str, **options: Any) -> AsyncIterator[Chat]:
    """Connect to the WebSocket endpoint `url` with `token` and keep the chat connected.

    Returns once the first connection is up (`chat.user` is known). Keyword `options` are
    the fields of `ChatOptions` (`give_up_after`, `backoff`, `buffer_size`, ...). Raises
    Unauthorized for a refused token, ConnectionFailed when `give_up_after` passes first.
    Leaving the block closes the connection with 1000.
    """
    chat = Chat(url, token=token, options=ChatOptions(**options))
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._connector.run)
        try:
            await chat._live_session()
            yield chat
        except BaseException as exc:  # re-raised below, outside the nursery: never wrapped in a group
            error = exc
        finally:
            with trio.CancelScope(shield=True):
                await chat.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
