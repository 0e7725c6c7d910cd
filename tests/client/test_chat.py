"""The client library's commands and event stream against a real server (no faults)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from chat_actors.client import (
    Ack, Chat, ChatClosed, HistoryPage, Joined, Left, Message, PresenceEvent, PresenceList, ReadEvent, TypingEvent,
    open_chat, publish,
)

from .helpers import FAST, Collector, assert_stream_is_history, collect, full_history


@pytest.fixture
def server_overrides():
    return {"api_key": "test-api-key-0123456789"}


async def test_send_history_and_the_stream_of_both_sides(server):
    alice, bob = await server.user("alice"), await server.user("bobby")
    async with open_chat(server.ws_url, token=alice, backoff=FAST) as a, \
            open_chat(server.ws_url, token=bob, backoff=FAST) as b:
        assert (a.user, b.user) == ("alice", "bobby")
        joined = await a.join("general")
        assert isinstance(joined, Joined) and joined.seq == 0 and joined.recovered
        await b.join("general")
        acks = [await a.send("general", f"hello {i}", meta={"n": i}) for i in range(3)]
        assert all(isinstance(x, Ack) for x in acks) and [x.seq for x in acks] == [1, 2, 3]
        bob_sees = await collect(b, "general", 3)
        # the sender's own stream holds its messages too, built from the acks
        alice_sees = await collect(a, "general", 3)
        history = await full_history(a, "general")
        assert_stream_is_history(bob_sees, history)
        assert_stream_is_history(alice_sees, history)
        assert [(m.id, m.sender, m.text, m.meta, m.ts) for m in history] == [
            (x.id, "alice", f"hello {i}", {"n": i}, x.ts) for i, x in enumerate(acks)
        ]
        page = await b.history("general", before=3, limit=1)
        assert isinstance(page, HistoryPage) and [m.seq for m in page.messages] == [2] and page.more


async def test_join_since_replays_then_continues_live(server):
    alice, bob = await server.user("alice"), await server.user("bobby")
    async with open_chat(server.ws_url, token=alice, backoff=FAST) as a:
        await a.join("general")
        for i in range(5):
            await a.send("general", f"m{i}")
        async with open_chat(server.ws_url, token=bob, backoff=FAST) as b:
            await b.join("general", since=2)
            await a.send("general", "live")
            seen = await collect(b, "general", 6)
        assert [m.seq for m in seen] == [3, 4, 5, 6] and seen[-1].text == "live"


async def test_direct_messages_typing_read_and_presence(server):
    async with alice_and_bob(server) as (a, b):
        ack = await b.dm("alice", "psst")
        assert ack.room == "dm:alice:bobby" and ack.seq == 1
        event = await _next(a, Message)
        assert (event.room, event.sender, event.text) == ("dm:alice:bobby", "bobby", "psst")
        await a.typing("general")
        typing = await _next(b, TypingEvent, skip=(Message,))  # bob's stream has his own dm
        assert (typing.room, typing.user) == ("general", "alice")
        await b.send("general", "hi")
        await a.read("general", 1)
        read = await _next(b, ReadEvent, skip=(Message,))
        assert (read.room, read.user, read.seq) == ("general", "alice", 1)
        listing = await a.presence("general")
        assert isinstance(listing, PresenceList)
        assert {m.user: m.connections for m in listing.members} == {"alice": 1, "bobby": 1}


async def test_leave_ends_the_rooms_stream(server):
    async with alice_and_bob(server) as (a, b):
        left = await a.leave("general")
        assert isinstance(left, Left) and left.room == "general"
        await b.send("general", "after the leave")
        await b.dm("alice", "marker")  # sent after the room message was stored
        event = await _next(a, Message)
        assert (event.room, event.text) == ("dm:alice:bobby", "marker")


async def test_http_publish_appears_in_the_stream(server):
    alice = await server.user("alice")
    async with open_chat(server.ws_url, token=alice, backoff=FAST) as a:
        await a.join("news")
        first = await publish(server.http_url, "news", "from a script", api_key=server.config.api_key, id="n1")
        again = await publish(server.http_url, "news", "from a script", api_key=server.config.api_key, id="n1")
        assert (first.seq, first.duplicate) == (1, False)
        assert (again.seq, again.ts, again.duplicate) == (first.seq, first.ts, True)
        (msg,) = await collect(a, "news", 1)
        assert (msg.sender, msg.id, msg.text) == ("system", "n1", "from a script")


async def test_a_program_that_does_not_read_loses_no_message(server):
    """A full events buffer: messages wait (held, then read again from the store), the
    connection keeps working (acks arrive), ephemeral events are dropped and counted."""
    async with alice_and_bob(server, buffer_size=4, hold_limit=3) as (a, b):
        for i in range(30):
            await a.send("general", f"m{i}")
        await a.typing("general")
        await b.send("general", "bob still gets acks")  # seq 31
        await a.send("general", "the last one")  # seq 32, the ack that shows the typing was relayed
        seen = await collect(b, "general", 32)
        assert_stream_is_history(seen, await full_history(b, "general"))
        stats = b.statistics()
        assert stats.history_pages >= 1
        assert stats.dropped_events >= 1  # the typing event (and presence) found the buffer full


async def test_events_end_when_the_chat_closes(server):
    alice = await server.user("alice")
    async with open_chat(server.ws_url, token=alice, backoff=FAST) as a:
        collector = Collector(a, "general")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run)
            await a.join("general")
            await a.aclose()
        # the collector's `async for` ended by itself: the nursery could exit
        with pytest.raises(ChatClosed):
            await a.send("general", "too late")
        assert not a.connected


@asynccontextmanager
async def alice_and_bob(server, **bob_options) -> AsyncIterator[tuple[Chat, Chat]]:
    """Two users' chats, both joined to `general` (alice first)."""
    alice, bob = await server.user("alice"), await server.user("bobby")
    async with open_chat(server.ws_url, token=alice, backoff=FAST) as a, \
            open_chat(server.ws_url, token=bob, backoff=FAST, **bob_options) as b:
        await a.join("general")
        await b.join("general")
        yield a, b


async def _next(chat, kind, *, skip=(), timeout: float = 10.0):
    """The next event of `kind`, ignoring presence and typing noise and anything in `skip`."""
    with trio.fail_after(timeout):
        async for event in chat.events():
            if isinstance(event, kind):
                return event
            assert isinstance(event, (PresenceEvent, TypingEvent, ReadEvent, *skip)), event
    raise AssertionError("events ended")
