"""The bus between the nodes and Redis fails (PROTOCOL section 9 "Failure behaviour"): cut,
or silent (bytes black-holed, TCP left open). Every node keeps serving its own clients,
`/readyz` says degraded, nobody is disconnected, reconnects back off; once Redis is back,
cross-node delivery resumes and every message committed meanwhile reaches every joined
connection on every node, in seq order, once. Each node reaches Redis through its own
FaultProxy; PostgreSQL stays up throughout."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from .harness import NODE_LEASE_S, OFFLINE_BOUND_S, PRESENCE_GRACE_S, Cluster, Node, assert_gap_free, seqs

ROOM = "lobby"
#: a window to count reconnect attempts in while Redis is unreachable
WINDOW_S = 5.0
#: redis.py's backoff (0.25 s doubling to 2.5 s, jittered) allows about 5 attempts in 5 s,
#: each opening two connections; a busy loop would make hundreds
MAX_CONNECTIONS_IN_WINDOW = 2 * 10
#: CPU seconds a node may use over WINDOW_S with nothing to do but wait for Redis (an idle
#: node uses a few hundredths; a busy loop would use most of a core)
MAX_IDLE_CPU_S = 1.0
#: PROTOCOL section 9 says within 5 s of the bus coming back; generous for a loaded machine
RESUME_S = 15.0

DEGRADED = (200, {"status": "degraded", "store": "ok", "bus": "down"})
OK = (200, {"status": "ok", "store": "ok", "bus": "ok"})


async def _wait_ready(node: Node, status: int, body: dict[str, str], timeout: float = 15.0) -> None:
    got: Any = None
    with trio.move_on_after(timeout):
        while True:
            got = await node.readyz()
            if got == (status, body):
                return
            await trio.sleep(0.1)
    raise AssertionError(f"{node.name} /readyz is {got}, expected {(status, body)}")


async def _outage(cluster: Cluster, fault: str, nodes: list[Node]) -> None:
    """Take the bus away from `nodes` (`cut` or `blackhole`) and wait until each reports it."""
    if fault == "cut":
        cluster.cut_bus(*nodes)
    else:
        cluster.blackhole_bus(*nodes)
    for node in nodes:
        await _wait_ready(node, *DEGRADED)


def _keys(messages: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
    return [(m["seq"], m["id"], m["ts"]) for m in messages]


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_bus_outage_on_every_node_then_back(proxied_cluster: Cluster, fault: str) -> None:
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    names = ["send1", "send2", "read1", "read2", "read3"]
    tokens = dict(zip(names, await cluster.users(*names)))
    async with n1.connect(tokens["send1"]) as s1, n2.connect(tokens["send2"]) as s2, \
            n1.connect(tokens["read1"]) as r1, n2.connect(tokens["read2"]) as r2, \
            n3.connect(tokens["read3"]) as r3:
        conns = (s1, s2, r1, r2, r3)
        for conn in conns:
            await conn.join(ROOM)
        await s1.send_message(ROOM, "before", id="before")
        for conn in (s2, r1, r2, r3):
            await conn.expect("message", room=ROOM, id="before")
        reconnects = {node.name: await node.metric("chat_bus_reconnects") for node in cluster}

        await _outage(cluster, fault, cluster.nodes)
        accepted = {node.name: node.redis.accepted for node in cluster}  # type: ignore[union-attr]
        started = trio.current_time()
        # same-node service goes on: acks, delivery to the node's own readers, history
        during: list[dict[str, Any]] = []
        for i in range(5):
            for sender in (s1, s2):
                ack = await sender.send_message(ROOM, f"{sender.user} during {i}", id=f"{sender.user}-during-{i}")
                assert ack["type"] == "ack", ack
                during.append(ack)
        # each node's reader gets everything up to its own node's last message (the other
        # node's messages in between are read from the store: no gap, even now)
        early: dict[str, list[dict[str, Any]]] = {}
        for reader, sender in ((r1, "send1"), (r2, "send2")):
            last = max(a["seq"] for a in during if a["id"].startswith(sender))
            early[reader.user] = await reader.messages(ROOM, last - 1)
            assert seqs(early[reader.user]) == list(range(2, last + 1))
        page = await r3.history(ROOM, after=0)
        assert seqs(page["messages"]) == list(range(1, 12))
        for node in cluster:
            assert await node.readyz() == DEGRADED, node.name
        # no busy loop: count the connections each node opens towards Redis, and the CPU
        # time it uses, over a quiet window of the outage
        await trio.sleep(max(0.0, WINDOW_S - (trio.current_time() - started)))
        cpu = {node.name: node.cpu_seconds() for node in cluster}
        await trio.sleep(WINDOW_S)
        for node in cluster:
            opened = node.redis.accepted - accepted[node.name]  # type: ignore[union-attr]
            assert opened <= 2 * MAX_CONNECTIONS_IN_WINDOW, f"{node.name} opened {opened} connections"
            used = node.cpu_seconds() - cpu[node.name]
            assert used < MAX_IDLE_CPU_S, f"{node.name} used {used:.2f} s of CPU in {WINDOW_S} s of a quiet outage"
        for conn in conns:  # nobody was disconnected
            await conn.ping()

        cluster.restore_bus()
        # every message committed during the outage reaches every joined connection on every
        # node: the third node had no sender, so only the catch-up can bring them
        got3 = await r3.messages(ROOM, 10, timeout=RESUME_S)
        for node in cluster:
            await _wait_ready(node, *OK, timeout=RESUME_S)
        # and cross-node delivery is live again
        late = await s2.send_message(ROOM, "after", id="after")
        tail = await r3.messages(ROOM, 1, timeout=RESUME_S)
        assert tail[0]["id"] == "after" and tail[0]["seq"] == late["seq"] == 12

        history = await cluster.history(ROOM, tokens["read1"])
        assert_gap_free(history)
        assert len(history) == 12
        keys = _keys(history)
        assert _keys(got3 + tail) == keys[1:]
        for reader in (r1, r2):
            seen = early[reader.user]
            got = seen + await reader.messages(ROOM, 11 - len(seen), timeout=RESUME_S)
            assert _keys(got) == keys[1:]
        for sender in (s1, s2):
            others = [m for m in history[1:] if m["from"] != sender.user]
            got = await sender.messages(ROOM, len(others), timeout=RESUME_S)
            assert _keys(got) == _keys(others)
        for conn in conns:
            await conn.assert_silent(0.5, ignore=("presence", "typing", "read"))
            assert conn.close_code is None
        for node in cluster:
            came_back = await node.metric("chat_bus_reconnects") - reconnects[node.name]
            assert 1 <= came_back <= 2, f"{node.name} reconnected {came_back} times"


async def test_one_node_cut_off_from_the_bus_catches_up_both_ways(proxied_cluster: Cluster) -> None:
    """Only the first node loses Redis. In one room only it commits meanwhile: the others
    learn of those messages when it is back (it announces its heads). In another room only
    the second node commits: the first node reads them from the store when it is back."""
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with n1.connect(alice) as a1, n2.connect(bob) as b2, n3.connect(carol) as c3:
        for conn in (a1, b2, c3):
            await conn.join("outbound")
            await conn.join("inbound")
        await _outage(cluster, "cut", [n1])
        await _wait_ready(n2, *OK)
        for i in range(3):
            await a1.send_message("outbound", f"alice {i}", id=f"a-{i}")
            await b2.send_message("inbound", f"bob {i}", id=f"b-{i}")
        got = await c3.messages("inbound", 3)  # n2 and n3 share a bus
        assert [m["id"] for m in got] == ["b-0", "b-1", "b-2"]
        cluster.restore_bus(n1)
        for conn in (b2, c3):
            got = await conn.messages("outbound", 3, timeout=RESUME_S)
            assert [(m["seq"], m["id"]) for m in got] == [(1, "a-0"), (2, "a-1"), (3, "a-2")]
        got = await a1.messages("inbound", 3, timeout=RESUME_S)
        assert [(m["seq"], m["id"]) for m in got] == [(1, "b-0"), (2, "b-1"), (3, "b-2")]
        # live both ways again
        ack = await a1.send_message("inbound", "back", id="back")
        for conn in (b2, c3):
            got = await conn.expect("message", room="inbound", id="back", timeout=RESUME_S)
            assert got["seq"] == ack["seq"] == 4
        for conn in (a1, b2, c3):
            await conn.assert_silent(0.5, ignore=("presence",))


def _members(listing: dict[str, Any]) -> dict[str, int]:
    return {m["user"]: m["connections"] for m in listing["members"]}


async def test_a_node_cut_off_longer_than_its_lease_counts_again_when_back(proxied_cluster: Cluster) -> None:
    """Cut off for longer than CHAT_NODE_LEASE + CHAT_PRESENCE_GRACE, a node looks crashed to
    the others: its users go offline there. Once its bus is back they are online again,
    everywhere, and presence follows them as before."""
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with n1.connect(alice) as a1, n2.connect(bob) as b2, n3.connect(carol) as c3:
        for conn in (a1, b2, c3):
            await conn.join(ROOM)
        for conn in (b2, c3):
            assert _members(await conn.presence(ROOM)) == {"alice": 1, "bob": 1, "carol": 1}
        await _outage(cluster, "cut", [n1])
        for conn in (b2, c3):
            await conn.expect("presence", room=ROOM, user="alice", status="offline", timeout=OFFLINE_BOUND_S)
        cluster.restore_bus(n1)
        for conn in (b2, c3):
            await conn.expect("presence", room=ROOM, user="alice", status="online", timeout=RESUME_S)
        # and stay online: long enough for a wrong second "offline" (lease check and grace)
        await trio.sleep(NODE_LEASE_S + PRESENCE_GRACE_S + 1.0)
        for conn in (b2, c3):
            assert _members(await conn.presence(ROOM)) == {"alice": 1, "bob": 1, "carol": 1}
            flips = [e for e in conn.buffer if e["type"] == "presence" and e["user"] == "alice"]
            assert not flips, flips
        # alice's own node heard nothing of bob and carol leaving meanwhile: nobody left
        assert _members(await a1.presence(ROOM)) == {"alice": 1, "bob": 1, "carol": 1}
        # presence works across nodes as before: alice leaves
        await a1.leave(ROOM)
        for conn in (b2, c3):
            got = await conn.expect("presence", room=ROOM, user="alice", timeout=RESUME_S)
            assert got["status"] == "offline"
        await trio.sleep(NODE_LEASE_S + PRESENCE_GRACE_S)  # long enough for a wrong "online"
        for conn in (b2, c3):
            assert _members(await conn.presence(ROOM)) == {"bob": 1, "carol": 1}
        assert not [e for e in c3.buffer if e["type"] == "presence" and e["user"] == "alice"], c3.buffer


async def test_direct_messages_committed_while_a_node_is_cut_off_reach_its_devices(proxied_cluster: Cluster) -> None:
    """Alice writes to bob while bob's node has lost Redis: the first direct message of the
    two (no node had an actor for their room) and two more. Every device on that node gets
    each message once the bus is back, without a reconnect, and none twice (`late`, which
    connected during the outage, had the first one in its welcome)."""
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    alice, bob = await cluster.users("alice", "bob")
    room = "dm:alice:bob"
    async with n1.connect(bob) as b1, n1.connect(alice) as a1, n2.connect(alice) as a2, n3.connect(alice) as a3:
        await _outage(cluster, "cut", [n1])
        acks = [await a2.dm("bob", "are you there?", id="q1")]
        assert acks[0]["seq"] == 1, acks
        async with n1.connect(bob) as late:
            assert [m["id"] for m in late.offline] == ["q1"]
            acks += [await a2.dm("bob", f"hello? {i}", id=f"q{i}") for i in (2, 3)]
            assert [a["seq"] for a in acks] == [1, 2, 3]
            assert seqs(await a3.messages(room, 3)) == [1, 2, 3]   # n2 and n3 share a bus
            cluster.restore_bus(n1)
            for device in (b1, a1):
                got = await device.messages(room, 3, timeout=RESUME_S)
                assert [(m["seq"], m["id"], m["ts"]) for m in got] == [(a["seq"], a["id"], a["ts"]) for a in acks]
            got = await late.messages(room, 2, timeout=RESUME_S)
            assert [m["id"] for m in got] == ["q2", "q3"]
            answer = await b1.dm("alice", "yes", id="a")
            assert answer["seq"] == 4
            for device in (a1, a2, a3, late):
                got = await device.expect("message", room=room, id="a", timeout=RESUME_S)
                assert got["seq"] == 4
            for device in (b1, a1, a2, a3, late):
                await device.assert_silent(0.5)


async def test_a_resume_on_a_node_the_bus_has_not_reached_repeats_nothing(proxied_cluster: Cluster) -> None:
    """A client resumes with `join since` on a node that has not delivered the room up to
    `since` yet (the bus to it is down): the node reads the room up to the store's head
    before answering, so `joined.seq` is not below `since` and nothing at or below it comes
    again when the bus brings it later."""
    cluster = proxied_cluster
    n1, n2, _ = cluster.nodes
    writer_token, keeper_token, mover_token = await cluster.users("writer", "keeper", "mover")
    async with n1.connect(writer_token) as writer, n2.connect(keeper_token) as keeper:
        await writer.join(ROOM)
        await keeper.join(ROOM)             # the room lives on n2 too, with a member
        await writer.send_message(ROOM, "first", id="first")
        await keeper.expect("message", room=ROOM, id="first")
        await _outage(cluster, "cut", [n2])
        async with n1.connect(mover_token) as on_n1:
            await on_n1.join(ROOM)
            for i in range(3):
                await writer.send_message(ROOM, f"m{i}", id=f"m{i}")
            seen = await on_n1.messages(ROOM, 3)
        since = seen[-1]["seq"]
        async with n2.connect(mover_token) as on_n2:
            joined = await on_n2.join(ROOM, since=since)
            assert joined["seq"] == since and joined["recovered"] is True, joined
            cluster.restore_bus(n2)
            await _wait_ready(n2, *OK)
            await writer.send_message(ROOM, "after", id="after")
            after = await on_n2.messages(ROOM, 1, timeout=RESUME_S)
            assert seqs(after) == [since + 1], after
            await on_n2.assert_silent(0.5, ignore=("presence", "read", "typing"))
            # the member that stayed on n2 gets the missed ones once, in order
            assert seqs(await keeper.messages(ROOM, 4, timeout=RESUME_S)) == [since - 2, since - 1, since, since + 1]
