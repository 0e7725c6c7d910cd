"""One room, three nodes, one order (PROTOCOL sections 5 and 9): concurrent senders on every
node, retries through another node, HTTP publishes on any node."""

from __future__ import annotations

import os
from typing import Any

import trio

from integration.client import Conn

from .harness import Cluster, assert_gap_free, seqs

ROOM = "lobby"
#: per sender: within the default burst (40), so no send is rate-limited
PER_SENDER = 30


async def _send_all(conn: Conn, room: str, count: int, acks: list[dict[str, Any]]) -> None:
    """Send `count` messages without waiting for each ack, then collect every ack."""
    ids = [f"{conn.user}-{i}-{os.urandom(3).hex()}" for i in range(count)]
    refs = {}
    for i, id_ in enumerate(ids):
        ref = conn.new_ref()
        refs[ref] = id_
        await conn.send({"type": "send", "room": room, "id": id_, "text": f"{conn.user} #{i}", "ref": ref})
    for ref in refs:
        ack = await conn.expect("ack", ref=ref, timeout=30)
        acks.append(ack)


def _key(message: dict[str, Any]) -> tuple[Any, ...]:
    return message["seq"], message["id"], message["from"], message["text"], message["ts"]


async def test_concurrent_senders_on_every_node_one_gap_free_order_everywhere(cluster: Cluster) -> None:
    names = [f"{role}{i}" for i in range(3) for role in ("send", "read")]
    tokens = dict(zip(names, await cluster.users(*names)))
    async with cluster[0].connect(tokens["read0"]) as r0, cluster[1].connect(tokens["read1"]) as r1, \
            cluster[2].connect(tokens["read2"]) as r2, cluster[0].connect(tokens["send0"]) as s0, \
            cluster[1].connect(tokens["send1"]) as s1, cluster[2].connect(tokens["send2"]) as s2:
        readers, senders = [r0, r1, r2], [s0, s1, s2]
        for conn in readers + senders:
            await conn.join(ROOM)
        acks: dict[str, list[dict[str, Any]]] = {s.user: [] for s in senders}
        async with trio.open_nursery() as nursery:
            for sender in senders:
                nursery.start_soon(_send_all, sender, ROOM, PER_SENDER, acks[sender.user])
        total = 3 * PER_SENDER
        seen = [await reader.messages(ROOM, total, timeout=30) for reader in readers]
        history = await cluster.history(ROOM, tokens["read0"])

        assert_gap_free(history)
        assert len(history) == total
        for reader, got in zip(readers, seen):
            assert [_key(m) for m in got] == [_key(m) for m in history], f"{reader.welcome['node']} differs"
        # every ack names the stored message (seq and ts) of its id
        by_id = {m["id"]: m for m in history}
        for sender in senders:
            assert len(acks[sender.user]) == PER_SENDER
            for ack in acks[sender.user]:
                stored = by_id[ack["id"]]
                assert (stored["seq"], stored["ts"], stored["from"]) == (ack["seq"], ack["ts"], sender.user)
        # senders get everyone else's messages, in order, and never their own (echo filtering)
        for sender in senders:
            others = [m for m in history if m["from"] != sender.user]
            got = await sender.messages(ROOM, len(others), timeout=30)
            assert [_key(m) for m in got] == [_key(m) for m in others]
        for conn in readers + senders:
            await conn.assert_silent(0.3, ignore=("presence", "read", "typing"))


async def test_a_retry_through_another_node_returns_the_original_ack(cluster: Cluster) -> None:
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with cluster[0].connect(alice) as a0, cluster[1].connect(alice) as a1, \
            cluster[1].connect(bob) as b1, cluster[2].connect(carol) as c2:
        for conn in (a0, a1, b1, c2):
            await conn.join(ROOM)
        first = await a0.send_message(ROOM, "hello", id="m-1")
        assert first["type"] == "ack" and first["seq"] == 1
        for conn in (a1, b1, c2):
            got = await conn.expect("message", room=ROOM, id="m-1")
            assert (got["seq"], got["ts"]) == (first["seq"], first["ts"])

        # the same (from, room, id) on another node: the original ack, nothing delivered again
        again = await a1.send_message(ROOM, "hello (retry)", id="m-1")
        assert (again["type"], again["seq"], again["ts"]) == ("ack", first["seq"], first["ts"])
        # and over HTTP on a third node, with alice's token: 200 and the original seq/ts
        r = await cluster[2].publish(ROOM, "hello (http retry)", "m-1", token=alice)
        assert r.status_code == 200, r.text
        assert r.json() == {"seq": first["seq"], "ts": first["ts"]}

        # the same id from another user is another message
        other = await b1.send_message(ROOM, "mine", id="m-1")
        assert other["seq"] == 2
        for conn in (a0, a1, c2):
            got = await conn.expect("message", room=ROOM, id="m-1", from_="bob")
            assert got["seq"] == 2
        for conn in (a0, a1, b1, c2):
            await conn.assert_silent(0.5, ignore=("presence",))
        history = await cluster.history(ROOM, alice)
        assert [(m["seq"], m["from"], m["text"]) for m in history] == [(1, "alice", "hello"), (2, "bob", "mine")]


async def test_the_same_message_sent_through_two_nodes_at_once_is_stored_once(cluster: Cluster) -> None:
    alice, bob = await cluster.users("alice", "bob")
    async with cluster[0].connect(alice) as a0, cluster[1].connect(alice) as a1, \
            cluster[2].connect(alice) as a2, cluster[2].connect(bob) as b2:
        for conn in (a0, a1, a2, b2):
            await conn.join(ROOM)
        acks: list[dict[str, Any]] = []
        for round_ in range(10):
            id_ = f"race-{round_}"
            async with trio.open_nursery() as nursery:
                for conn in (a0, a1, a2):
                    nursery.start_soon(_send_into, acks, conn, id_)
        assert len(acks) == 30
        by_id: dict[str, set[tuple[int, int]]] = {}
        for ack in acks:
            assert ack["type"] == "ack", ack
            by_id.setdefault(ack["id"], set()).add((ack["seq"], ack["ts"]))
        assert all(len(v) == 1 for v in by_id.values()), by_id
        got = await b2.messages(ROOM, 10)
        assert seqs(got) == list(range(1, 11))
        await b2.assert_silent(0.5, ignore=("presence",))
        history = await cluster.history(ROOM, bob)
        assert seqs(history) == list(range(1, 11))
        assert {m["id"]: (m["seq"], m["ts"]) for m in history} == {k: next(iter(v)) for k, v in by_id.items()}


async def _send_into(out: list[dict[str, Any]], conn: Conn, id_: str) -> None:
    out.append(await conn.send_message(ROOM, "race", id=id_))


async def test_http_publish_on_any_node_reaches_websocket_clients_on_every_node(cluster: Cluster) -> None:
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with cluster[0].connect(alice) as a0, cluster[1].connect(bob) as b1, cluster[2].connect(carol) as c2:
        readers = (a0, b1, c2)
        for conn in readers:
            await conn.join(ROOM)
        answers = []
        for i, node in enumerate(cluster):
            r = await node.publish(ROOM, f"from {node.name}", f"sys-{i}")
            assert r.status_code == 201, r.text
            answers.append(r.json())
        r = await cluster[1].publish(ROOM, "bob over http", "bob-1", token=bob)
        assert r.status_code == 201, r.text
        answers.append(r.json())
        assert [a["seq"] for a in answers] == [1, 2, 3, 4]
        for conn in (a0, c2):
            got = await conn.messages(ROOM, 4)
            assert [(m["seq"], m["from"], m["ts"]) for m in got] == \
                [(1, "system", answers[0]["ts"]), (2, "system", answers[1]["ts"]),
                 (3, "system", answers[2]["ts"]), (4, "bob", answers[3]["ts"])]
        # an HTTP publish has no sending connection: bob's WebSocket gets his own message too
        got = await b1.messages(ROOM, 4)
        assert seqs(got) == [1, 2, 3, 4]
        # the same id again on another node: 200 with the original seq and ts, nothing new
        r = await cluster[2].publish(ROOM, "again", "sys-0")
        assert r.status_code == 200 and r.json() == answers[0]
        for conn in readers:
            await conn.assert_silent(0.5, ignore=("presence",))
