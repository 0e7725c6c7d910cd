"""PostgreSQL fails under the nodes (PROTOCOL section 9 "Failure behaviour"): cut, or silent
(bytes black-holed, TCP left open). `send`, `dm` and HTTP publishes answer `unavailable` and
store nothing, `/readyz` answers 503, connections stay open, and service resumes by itself
once the store is back, seq continuing without a gap. Each node reaches PostgreSQL through
its own FaultProxy; Redis stays up throughout."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from integration.client import Conn

from .harness import Cluster, Node, assert_gap_free

ROOM = "lobby"
UNAVAILABLE = (503, {"status": "unavailable", "store": "down", "bus": "ok"})
OK = (200, {"status": "ok", "store": "ok", "bus": "ok"})
#: a black-holed store answers when a call's deadline (3 s here) and its interrupt pass
ANSWER_S = 20.0


async def _wait_ready(node: Node, expected: tuple[int, dict[str, str]], timeout: float = 20.0) -> None:
    got: Any = None
    with trio.move_on_after(timeout):
        while True:
            got = await node.readyz()
            if got == expected:
                return
            await trio.sleep(0.1)
    raise AssertionError(f"{node.name} /readyz is {got}, expected {expected}")


def _fault(cluster: Cluster, fault: str, nodes: list[Node]) -> None:
    for proxy in cluster.store_proxies(*nodes):
        if fault == "cut":
            proxy.cut()
        else:
            proxy.blackhole()


async def _command(conn: Conn, cmd: dict[str, Any]) -> str:
    """Send `cmd` with a fresh ref, without waiting for its answer; the ref."""
    ref = cmd["ref"] = conn.new_ref()
    await conn.send(cmd)
    return ref


async def _publish_refused(node: Node) -> None:
    r = await node.publish(ROOM, "over http during the outage", f"http-out-{node.name}")
    assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
    await _wait_ready(node, UNAVAILABLE)


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_store_outage_answers_unavailable_stores_nothing_and_recovers(proxied_cluster: Cluster, fault: str) -> None:
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with n1.connect(alice) as a1, n2.connect(bob) as b2, n3.connect(carol) as c3:
        conns = (a1, b2, c3)
        for conn in conns:
            await conn.join(ROOM)
        first = await a1.send_message(ROOM, "before", id="before")
        for conn in (b2, c3):
            await conn.expect("message", room=ROOM, id="before")

        _fault(cluster, fault, cluster.nodes)
        # every command goes out at once; each is answered within the store's deadline
        sent: list[tuple[Conn, str]] = []
        for conn in conns:
            cmd = {"type": "send", "room": ROOM, "id": f"out-{conn.user}", "text": "during the outage"}
            sent.append((conn, await _command(conn, cmd)))
        sent.append((a1, await _command(a1, {"type": "dm", "to": "bob", "id": "dm-out", "text": "during"})))
        for conn, ref in sent:
            answer = await conn.expect("error", ref=ref, timeout=ANSWER_S)
            assert answer["code"] == "unavailable", answer
        async with trio.open_nursery() as nursery:
            for node in cluster:
                nursery.start_soon(_publish_refused, node)
        for conn in conns:  # still connected, and nothing was delivered
            await conn.ping()
            await conn.assert_silent(0.5, ignore=("presence",))

        for proxy in cluster.store_proxies():
            proxy.restore()
        for node in cluster:  # back by itself
            await _wait_ready(node, OK)
        # the next send is acked and seq continues without a gap; the failed ids were never
        # stored, so sending them again stores them now
        ack = await b2.send_message(ROOM, "after", id="out-bob")
        assert ack["type"] == "ack" and ack["seq"] == first["seq"] + 1, ack
        for conn in (a1, c3):
            assert (await conn.expect("message", room=ROOM, id="out-bob"))["seq"] == ack["seq"]
        r = await n3.publish(ROOM, "over http after", "http-out-n3")
        assert r.status_code == 201 and r.json()["seq"] == ack["seq"] + 1, r.text
        dm = await a1.dm("bob", "after", id="dm-out")
        assert dm["type"] == "ack" and dm["seq"] == 1, dm
        assert (await b2.expect("message", room="dm:alice:bob", id="dm-out"))["seq"] == 1
        history = await cluster.history(ROOM, alice)
        assert_gap_free(history)
        assert [m["id"] for m in history] == ["before", "out-bob", "http-out-n3"]
        for conn in conns:
            assert conn.close_code is None


async def test_one_node_without_its_store_keeps_its_clients_and_their_deliveries(proxied_cluster: Cluster) -> None:
    """Only the first node loses PostgreSQL: its clients' sends answer `unavailable` while
    they keep receiving what the other nodes commit; when it is back, its sends continue
    the room's seq."""
    cluster = proxied_cluster
    n1, n2, n3 = cluster.nodes
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with n1.connect(alice) as a1, n2.connect(bob) as b2, n3.connect(carol) as c3:
        for conn in (a1, b2, c3):
            await conn.join(ROOM)
        _fault(cluster, "cut", [n1])
        await _wait_ready(n1, UNAVAILABLE)
        await _wait_ready(n2, OK)
        refused = await a1.send_message(ROOM, "refused", id="refused")
        assert refused["type"] == "error" and refused["code"] == "unavailable", refused
        for i in range(3):
            ack = await b2.send_message(ROOM, f"bob {i}", id=f"bob-{i}")
            assert ack["seq"] == i + 1
        for conn in (a1, c3):
            got = await conn.messages(ROOM, 3)
            assert [(m["seq"], m["id"]) for m in got] == [(1, "bob-0"), (2, "bob-1"), (3, "bob-2")]
        for proxy in cluster.store_proxies(n1):
            proxy.restore()
        await _wait_ready(n1, OK)
        ack = await a1.send_message(ROOM, "back", id="refused")
        assert ack["type"] == "ack" and ack["seq"] == 4, ack
        for conn in (b2, c3):
            assert (await conn.expect("message", room=ROOM, id="refused"))["seq"] == 4
        history = await cluster.history(ROOM, bob)
        assert [m["id"] for m in history] == ["bob-0", "bob-1", "bob-2", "refused"]
