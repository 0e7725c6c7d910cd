"""The program's events buffer and the room streams that feed it.

Policy of the buffer (bounded, `buffer_size` events) when the program does not read:

* room messages are never lost: the session keeps reading (acks and replies keep flowing),
  each room holds early messages up to its `hold_limit`, and what does not fit is read again
  from the store with `history after=` once the program catches up, in order;
* ephemeral events (typing, read, presence) and unsolicited errors are dropped and counted
  (`dropped`), as the server itself drops ephemeral events for a slow connection.

Handing messages over is done by the session's reader (without blocking: `send_nowait`)
while a room is complete, and by one filler task per room while it is not (blocking on the
buffer, reading gaps from the store). Exactly one of them owns a room's delivery at a time
(`RoomStream.filling`), so the room's order holds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from chat_actors.protocol import parse_dm_room
from chat_actors.records import ErrorEvent, Event, HistoryPage, Message

from .errors import ChatError
from .rooms import RoomStream
from .session import Session, SessionEnded

__all__ = ["Delivery", "FetchPage", "GAP_GRACE_S", "HISTORY_PAGE"]

log = logging.getLogger(__name__)

#: How long a gap may wait for the missing message to arrive by itself (an `ack` that
#: overtook someone else's `message`) before it is read from the store.
GAP_GRACE_S = 0.25
#: History page size used to fill gaps (the protocol's maximum).
HISTORY_PAGE = 200

#: fetch(session, room, after) -> the page of stored messages with seq > after
FetchPage = Callable[[Session, str, int], Awaitable[HistoryPage]]


class Delivery:
    """See the module docstring."""

    def __init__(self, *, buffer_size: int, hold_limit: int, fetch: FetchPage, direct_messages: bool) -> None:
        self._send, self._receive = trio.open_memory_channel[Event](buffer_size)
        self._fetch = fetch
        self._hold_limit = hold_limit
        self._direct = direct_messages
        self._wakeups: dict[str, trio.Event] = {}
        self.streams: dict[str, RoomStream] = {}
        self.dropped = 0
        self.history_pages = 0

    # ------------------------------------------------------------------ streams

    def track(self, room: str, *, last: int | None, head: int = 0) -> RoomStream:
        """The room's stream, created with `last`/`head` if it is new."""
        stream = self.streams.get(room)
        if stream is None:
            stream = self.streams[room] = RoomStream(room, last=last, hold_limit=self._hold_limit)
            stream.see_head(head)
        return stream

    def untrack(self, room: str) -> None:
        """Stop the room's stream (what is already in the buffer stays there)."""
        self.streams.pop(room, None)
        self._wake(room)

    def stream_for(self, room: str, seq: int) -> RoomStream | None:
        """The stream a message of `room` belongs to. A direct room seen for the first time
        (created after this connection's `welcome`) starts just before that message."""
        stream = self.streams.get(room)
        if stream is None and self._direct and parse_dm_room(room) is not None:
            stream = self.track(room, last=seq - 1)
        return stream

    # ------------------------------------------------------------------ input

    def offer(self, session: Session | None, message: Message, *, grace: bool = True) -> None:
        """A message from the connection (live, replayed, or the program's own after its ack)."""
        stream = self.stream_for(message.room, message.seq)
        if stream is not None and stream.offer(message):
            self.pump(session, stream, grace=grace)

    def ephemeral(self, event: Event) -> None:
        """typing, read, presence or an unsolicited error: delivered if there is room, else dropped."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def problem(self, room: str, error: ChatError) -> None:
        """The library stopped following `room` because the server refused it: tell the program."""
        log.warning("stopped following %s: %s", room, error)
        self.untrack(room)
        self.ephemeral(ErrorEvent(code=error.code.value if error.code else "internal",
                                  message=f"{room}: {error.message or error}"))

    # ------------------------------------------------------------------ output

    def pump(self, session: Session | None, stream: RoomStream, *, grace: bool) -> None:
        """Hand over what is in order without blocking; start a filler for the rest."""
        if stream.filling:
            self._wake(stream.room)
            return
        while (message := stream.peek()) is not None:
            try:
                self._send.send_nowait(message)
            except trio.WouldBlock:
                break
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            stream.commit(message.seq)
        if not stream.caught_up() and session is not None and session.live and session.alive:
            stream.filling = True
            assert session.nursery is not None
            session.nursery.start_soon(self._fill, session, stream, grace)

    async def _fill(self, session: Session, stream: RoomStream, grace: bool) -> None:
        try:
            while not stream.caught_up() and self.streams.get(stream.room) is stream:
                message = stream.peek()
                if message is not None:
                    await self._send.send(message)
                    stream.commit(message.seq)
                    continue
                if grace:  # the missing message may still be on its way
                    grace = False
                    with trio.move_on_after(GAP_GRACE_S):
                        await self._wakeup(stream.room).wait()
                    continue
                await self._fill_page(session, stream)
        except (trio.ClosedResourceError, trio.BrokenResourceError, SessionEnded):
            pass  # the chat closed, or the connection ended: the next one resumes
        except ChatError as exc:
            self.problem(stream.room, exc)
        finally:
            stream.filling = False

    async def _fill_page(self, session: Session, stream: RoomStream) -> None:
        assert stream.last is not None
        page = await self._fetch(session, stream.room, stream.last)
        self.history_pages += 1
        for message in page.messages:
            if message.seq <= stream.last:
                continue
            if message.seq != stream.last + 1:
                break
            await self._send.send(message)
            stream.commit(message.seq)
        if not page.messages and not page.more:
            # The store has nothing after `last`: the head was never stored (cannot happen
            # with this server; without this a wrong head would spin here).
            log.warning("%s: seq %d announced but not stored", stream.room, stream.head)
            stream.head = stream.last
            stream.held.clear()

    def _wakeup(self, room: str) -> trio.Event:
        event = self._wakeups.get(room)
        if event is None:
            event = self._wakeups[room] = trio.Event()
        return event

    def _wake(self, room: str) -> None:
        event = self._wakeups.pop(room, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ the program's side

    async def receive(self) -> Event:
        """The next event; EndOfChannel once the chat is closed and the buffer is empty."""
        return await self._receive.receive()

    def close(self) -> None:
        self._send.close()

    @property
    def buffered(self) -> int:
        return self._send.statistics().current_buffer_used
