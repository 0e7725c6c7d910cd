"""Reconnects, resumes and retries against a real server, with real faults between them.

The faults come from `tests/faultproxy.py` sitting between the library and the server:
`cut()` closes every connection (a network drop), `silence_replies()` lets commands reach
the server while its answers are lost, `blackhole()` swallows everything silently.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
from faultproxy import FaultProxy

from chat_actors.client import open_chat

from integration.client import connect

from .helpers import (
    FAST, Collector, assert_stream_is_history, consuming, full_history, same_ports, send_all, wait_for, ws_port,
    ws_via,
)


@pytest.fixture
def server_overrides():
    # producers in these tests send faster than a person would
    return {"rate_per_second": 5000.0, "rate_burst": 5000}


async def test_cuts_mid_stream_leave_no_gap_and_no_repeat(server):
    alice, bob = await server.user("alice"), await server.user("bobby")
    total = 240
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            consuming(ws_via(proxy.port), bob) as (consumer, collector):
        acked: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(send_all, server.ws_url, alice, [f"m{i}" for i in range(total)], progress=acked))
            for cut, when in enumerate((40, 100, 170)):
                await wait_for(lambda: len(acked) >= when)
                proxy.cut()
                await trio.sleep(0.05)  # messages keep being stored while the consumer is away
                proxy.restore()
                await wait_for(lambda: consumer.statistics().connects == cut + 2)
            await collector.until(total)
        assert_stream_is_history(collector.messages, await full_history(consumer, "general"))
        assert consumer.statistics().connects == 4 and proxy.accepted >= 4


async def test_a_lost_ack_is_retried_with_the_same_id(server):
    """The server stores the message, the ack is lost on the way back, the connection dies:
    the send goes out again with its id and returns the original ack; nothing is doubled."""
    alice = await server.user("alice")
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            open_chat(ws_via(proxy.port), token=alice, backoff=FAST) as chat, \
            connect(server.ws_url, alice) as observer:
        await chat.join("general")
        await observer.send({"type": "join", "room": "general"})
        await observer.expect("joined")
        proxy.silence_replies()
        result: list = []

        async def send() -> None:
            result.append(await chat.send("general", "exactly once", id="lost-ack-1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            stored = await observer.expect("message", id="lost-ack-1")  # stored and fanned out
            assert not result  # ... and its ack did not arrive
            proxy.cut()
            proxy.restore()
        (ack,) = result
        assert (ack.id, ack.seq, ack.ts) == ("lost-ack-1", stored["seq"], stored["ts"])
        history = await full_history(chat, "general")
        assert [(m.id, m.seq) for m in history] == [("lost-ack-1", stored["seq"])]
        assert chat.statistics().resent >= 1 and chat.statistics().connects == 2
        # the sender's own stream shows it once: from the replay or from the ack, not both
        collector = Collector(chat, "general")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run)
            await chat.send("general", "marker")
            await collector.until(2)
            nursery.cancel_scope.cancel()
        assert [(m.seq, m.id) for m in collector.messages] == [(1, "lost-ack-1"), (2, collector.messages[1].id)]


async def test_recovered_false_is_filled_by_history_pages(server):
    """More than 1,000 missed: the server replays nothing (`recovered: false`); the library
    reads the gap with `history after=` pages before the live messages continue."""
    alice, bob = await server.user("alice"), await server.user("bobby")
    missed = 1_150
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            consuming(ws_via(proxy.port), bob) as (consumer, collector), \
            open_chat(server.ws_url, token=alice, backoff=FAST) as producer:
        await producer.join("general")
        await producer.send("general", "before the outage")
        await collector.until(1)
        proxy.cut()  # the consumer stays away (new connections are refused) until restore
        async with trio.open_nursery() as senders:
            for i in range(missed):
                senders.start_soon(producer.send, "general", f"missed {i}")
        proxy.restore()
        await wait_for(lambda: consumer.connected and consumer.statistics().connects == 2)
        await producer.send("general", "live again")
        await collector.until(missed + 2)
        assert_stream_is_history(collector.messages, await full_history(producer, "general"))
        assert consumer.statistics().history_pages >= missed // 200


async def test_offline_direct_messages_are_delivered_once(server):
    alice, bob = await server.user("alice"), await server.user("bobby")
    async with open_chat(server.ws_url, token=bob, backoff=FAST) as b:
        for i in range(3):
            await b.dm("alice", f"while you were out {i}")
    # the server replays unconfirmed direct messages after every welcome (at-least-once)
    for _ in range(2):
        async with connect(server.ws_url, alice) as raw:
            assert [e["seq"] for e in raw.offline if e["type"] == "message"] == [1, 2, 3]
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            open_chat(ws_via(proxy.port), token=alice, backoff=FAST) as a, \
            open_chat(server.ws_url, token=bob, backoff=FAST) as b:
        room = "dm:alice:bobby"
        collector = Collector(a, room)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run)
            await collector.until(3)
            proxy.cut()  # the next welcome replays 1..3 again
            proxy.restore()
            await wait_for(lambda: a.statistics().connects == 2 and a.connected)
            await b.dm("alice", "after the reconnect")
            await collector.until(4)
            await a.read(room, 4)  # confirmed: no longer replayed after a welcome
            await _wait_for_confirmation(server.ws_url, alice)
            nursery.cancel_scope.cancel()
        assert [m.seq for m in collector.messages] == [1, 2, 3, 4]


async def _wait_for_confirmation(ws_url: str, token: str) -> None:
    """Until a new connection of the user gets no offline direct messages (the `read` is
    fire-and-forget, so its effect is observed rather than assumed)."""
    with trio.fail_after(10):
        while True:
            async with connect(ws_url, token) as raw:
                if not raw.offline:
                    return
            await trio.sleep(0.05)


async def test_the_keepalive_replaces_a_silent_connection(server):
    """A connection that stops answering reports no error (half-open TCP): the keepalive
    ping finds it, the chat reconnects and resumes."""
    alice, bob = await server.user("alice"), await server.user("bobby")
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            consuming(ws_via(proxy.port), bob, keepalive=0.3, connect_timeout=2.0) as (consumer, collector):
        proxy.blackhole()
        await send_all(server.ws_url, alice, ["sent into the silence"])
        await wait_for(lambda: not consumer.connected)
        proxy.restore()
        await collector.until(1)
        assert [m.text for m in collector.messages] == ["sent into the silence"]
        assert consumer.statistics().connects >= 2


async def test_a_graceful_restart_1001_is_resumed(server_factory):
    """The server shuts down (1001 to every client), comes back on the same ports and
    database; the chat reconnects by itself and the stream goes on without a gap."""
    first = await server_factory()
    alice, bob = await first.user("alice"), await first.user("bobby")
    async with consuming(first.ws_url, bob) as (consumer, collector):
        await send_all(first.ws_url, alice, (f"before {i}" for i in range(5)))
        await collector.until(5)
        await first.stop()
        second = await server_factory(**same_ports(first))
        history = await send_all(second.ws_url, alice, (f"after {i}" for i in range(5)))
        await collector.until(10)
    assert_stream_is_history(collector.messages, history)
    assert consumer.statistics().connects == 2


async def test_a_server_restored_from_an_older_backup_does_not_silence_the_stream(server_factory, tmp_path):
    """The room comes back with fewer messages than the chat has seen (a database restored
    from a backup): the stream cannot be made whole, but it must go on with the new
    messages instead of dropping them as "duplicates" of seqs it already handed over."""
    first = await server_factory()
    alice, bob = await first.user("alice"), await first.user("bobby")
    database, backup = tmp_path / "chat.db", tmp_path / "backup.db"
    async with consuming(first.ws_url, bob) as (consumer, collector):
        await send_all(first.ws_url, alice, (f"before {i}" for i in range(3)))
        await trio.to_thread.run_sync(_sqlite_backup, database, backup)
        await send_all(first.ws_url, alice, (f"before {i}" for i in range(3, 8)))
        await collector.until(8)
        await first.stop()
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"chat.db{suffix}").unlink(missing_ok=True)
        backup.rename(database)
        second = await server_factory(**same_ports(first))
        await wait_for(lambda: consumer.connected and consumer.statistics().connects == 2)
        await send_all(second.ws_url, alice, ["after the restore"])  # seq 4 again
        await collector.count(9)
    assert [(m.seq, m.text) for m in collector.messages] == [
        *((i + 1, f"before {i}") for i in range(8)), (4, "after the restore"),
    ]


def _sqlite_backup(source, target) -> None:
    import sqlite3

    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


async def test_a_send_waits_through_an_outage_until_acked_or_the_callers_deadline(server):
    alice = await server.user("alice")
    # connect_timeout: the proxy resets connections it has accepted, which trio-websocket
    # reports only when the attempt times out (a refused connection fails at once)
    async with FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy, \
            open_chat(ws_via(proxy.port), token=alice, backoff=FAST, connect_timeout=1.0) as chat:
        await chat.join("general")
        proxy.cut()  # the server is out of reach until restore()
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            await chat.send("general", "the caller gave up", id="gave-up")
        acks = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(acks, chat.send("general", "worth the wait", id="waited")))
            await wait_for(lambda: proxy.accepted >= 3)  # the chat is trying to reconnect
            assert not acks
            proxy.restore()
        assert [a.id for a in acks] == ["waited"]
        assert [m.id for m in await full_history(chat, "general")] == ["waited"]


async def _append(out: list, awaitable) -> None:
    out.append(await awaitable)
