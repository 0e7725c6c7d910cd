"""kill -9 of a node (PROTOCOL section 9 "Failure behaviour"): no acked message is lost, its
clients resume on another node with `join since`, its users go offline elsewhere within
CHAT_NODE_LEASE + CHAT_PRESENCE_GRACE unless they came back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from integration.client import Conn, auth
from services import fresh_postgres_database, fresh_redis_prefix

from .harness import OFFLINE_BOUND_S, Cluster, assert_gap_free, open_cluster, seqs

ROOM = "busy"
#: messages per writer at most (bounded load); the writers pace themselves under the rate limit
MAX_PER_WRITER = 400
#: a lease much longer than the few commands a test runs after cutting a node off
SLOW_LEASE_S = 6.0


async def _write(conn: Conn, acks: list[dict[str, Any]], stop: trio.Event) -> None:
    """Send, wait for the ack, repeat until `stop` or the connection dies."""
    try:
        for i in range(MAX_PER_WRITER):
            if stop.is_set():
                return
            cmd = {"type": "send", "room": ROOM, "id": f"{conn.user}-{i}", "text": f"{conn.user} {i}"}
            ack = await conn.request(cmd, "ack", timeout=20)
            assert ack["type"] == "ack", ack
            acks.append(ack)
            await trio.sleep(0.06)
    except ConnectionClosed:
        pass


def _all_messages(conn: Conn) -> list[dict[str, Any]]:
    """The `message` events of ROOM buffered on `conn` (after `expect_close`)."""
    return [e for e in conn.buffer if e["type"] == "message" and e["room"] == ROOM]


async def test_kill_9_mid_traffic_loses_no_acked_message_and_clients_resume_elsewhere(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    names = ["ww1", "ww2", "ww3", "rr1", "rr2", "mover", "victim", "watcher"]
    tokens = dict(zip(names, await cluster.users(*names)))
    acks: dict[str, list[dict[str, Any]]] = {"ww1": [], "ww2": [], "ww3": []}
    async with n1.connect(tokens["ww1"]) as w1, n2.connect(tokens["ww2"]) as w2, n3.connect(tokens["ww3"]) as w3, \
            n1.connect(tokens["rr1"]) as r1, n2.connect(tokens["rr2"]) as r2, \
            n3.connect(tokens["mover"]) as mover, n3.connect(tokens["victim"]) as victim, \
            n1.connect(tokens["watcher"]) as watcher:
        for conn in (watcher, w1, w2, w3, r1, r2, mover, victim):
            await conn.join(ROOM)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for conn in (w1, w2, w3):
                nursery.start_soon(_write, conn, acks[conn.user], stop)
            with trio.fail_after(30):
                while min(len(a) for a in acks.values()) < 10:
                    await trio.sleep(0.05)
            await n3.kill()

            # the dead node's clients see their connection drop
            for conn in (mover, victim):
                await conn.expect_close(timeout=10)
            before = _all_messages(mover)
            assert_gap_free(before)
            # mover comes back at once on the first node and resumes where it was
            async with n1.connect(tokens["mover"]) as back, n2.connect(tokens["ww3"]) as w3_back:
                since = before[-1]["seq"] if before else 0
                joined = await back.join(ROOM, since=since)
                assert joined["recovered"] is True, joined
                await w3_back.join(ROOM, since=0)
                # the victim does not come back: offline on the live nodes within lease + grace
                got = await watcher.expect("presence", room=ROOM, user="victim", status="offline", timeout=OFFLINE_BOUND_S)
                assert got["status"] == "offline"
                await trio.sleep(1.0)  # traffic goes on for a while after the crash
                stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + 30
                await _finished(nursery)

                history = await cluster.history(ROOM, tokens["rr1"])
                assert_gap_free(history)
                stored = {(m["from"], m["id"]): (m["seq"], m["ts"]) for m in history}
                # every ack any client saw is in history with its seq and ts
                for user, seen in acks.items():
                    for ack in seen:
                        assert stored.get((user, ack["id"])) == (ack["seq"], ack["ts"]), (user, ack)
                assert len(acks["ww1"]) > 10 and len(acks["ww2"]) > 10  # traffic went on after the crash

                total = len(history)
                # readers on the live nodes: everything, in order, once
                for reader in (r1, r2):
                    assert seqs(await reader.messages(ROOM, total, timeout=20)) == list(range(1, total + 1))
                # the mover: what it had, then the replay and live messages, gap-free, no duplicates
                after = await back.messages(ROOM, total - since, timeout=20)
                assert seqs(before + after) == list(range(1, total + 1))
                # the other writers and the resumed one see everyone's messages but their own
                for conn, user in ((w1, "ww1"), (w2, "ww2")):
                    others = [m["seq"] for m in history if m["from"] != user]
                    assert seqs(await conn.messages(ROOM, len(others), timeout=20)) == others
                assert seqs(await w3_back.messages(ROOM, total, timeout=20)) == list(range(1, total + 1))
                assert seqs(await watcher.messages(ROOM, total, timeout=20)) == list(range(1, total + 1))
                for conn in (r1, r2, back, w1, w2, w3_back):
                    await conn.assert_silent(0.3, ignore=("presence", "read", "typing"))

        # the users who came back were never announced offline
        flips = [e for e in watcher.buffer if e["type"] == "presence" and e["user"] in ("mover", "ww3")]
        assert not [e for e in flips if e["status"] == "offline"], flips


async def _finished(nursery: trio.Nursery) -> None:
    """Wait for the nursery's tasks (the writers) to end, within its deadline."""
    while nursery.child_tasks:
        await trio.sleep(0.05)


@pytest.fixture
async def slow_lease_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Proxied, with a lease long enough that a node whose Redis link has just gone silent
    is still alive to the others while it commits (the scenario below needs that order)."""
    async with fresh_postgres_database() as db, fresh_redis_prefix() as redis:
        async with open_cluster(tmp_path, db, redis, proxied=True,
                                args=("--node-lease", str(SLOW_LEASE_S))) as running:
            yield running


async def test_messages_acked_by_a_node_that_dies_before_publishing_them_still_reach_everyone(
    slow_lease_cluster: Cluster,
) -> None:
    """A node's Redis link goes silent (nothing it publishes gets out), it acks a message from
    the store and dies: once its lease has run out, the other nodes read it from the store.
    First node 4, which had no client at all and had never published anything (only the
    list of instances tells of it); then node 3, which had a client in the room."""
    cluster = slow_lease_cluster
    n4 = await cluster.start_node()
    n1, n2, n3 = cluster.nodes[:3]
    bound = SLOW_LEASE_S + OFFLINE_BOUND_S
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with n1.connect(alice) as a1, n2.connect(bob) as b2:
        for conn in (a1, b2):
            await conn.join(ROOM)
            await conn.join("quiet")
        async with n4.http() as h:  # node 4's actor for "quiet" is up and subscribed
            r = await h.get("/api/rooms/quiet/presence", headers=auth(carol))
            assert r.status_code == 200, r.text
        cluster.blackhole_bus(n4)
        r = await n4.publish("quiet", "published, then the node died", "quiet-1")
        assert r.status_code == 201, r.text
        await n4.kill()
        for conn in (a1, b2):
            got = await conn.expect("message", room="quiet", id="quiet-1", timeout=bound)
            assert (got["seq"], got["ts"]) == (1, r.json()["ts"])

        async with n3.connect(carol) as c3:
            await c3.join(ROOM)
            first = await c3.send_message(ROOM, "before", id="before")
            for conn in (a1, b2):
                assert (await conn.expect("message", room=ROOM, id="before"))["seq"] == first["seq"]
            cluster.blackhole_bus(n3)
            last = await c3.send_message(ROOM, "acked, then the node died", id="last")
            assert last["type"] == "ack" and last["seq"] == first["seq"] + 1, last
            await n3.kill()
        for conn in (a1, b2):
            got = await conn.expect("message", room=ROOM, id="last", timeout=bound)
            assert (got["seq"], got["ts"]) == (last["seq"], last["ts"])
            await conn.assert_silent(0.3, ignore=("presence",))
