"""Typing, read and presence across nodes; private-room grants; the connection cap
(PROTOCOL sections 2, 5 and 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected

from integration.client import auth, upgrade_status
from services import fresh_postgres_database, fresh_redis_prefix

from .harness import PRESENCE_GRACE_S, Cluster, open_cluster

ROOM = "lobby"


async def test_typing_and_read_relays_reach_every_node(cluster: Cluster) -> None:
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with cluster[0].connect(alice) as a0, cluster[2].connect(alice) as a2, \
            cluster[1].connect(bob) as b1, cluster[2].connect(carol) as c2:
        for conn in (a0, a2, b1, c2):
            await conn.join(ROOM)
        await a0.send({"type": "typing", "room": ROOM})
        for conn in (a2, b1, c2):  # the sender's other device too
            assert (await conn.expect("typing", room=ROOM))["user"] == "alice"

        ack = await b1.send_message(ROOM, "read me")
        for conn in (a0, a2, c2):
            await conn.expect("message", room=ROOM, seq=ack["seq"])
        await a0.send({"type": "read", "room": ROOM, "seq": ack["seq"]})
        for conn in (a2, b1, c2):
            got = await conn.expect("read", room=ROOM, user="alice")
            assert got["seq"] == ack["seq"]
        # a cursor that does not move is not relayed, on any node
        await a2.send({"type": "read", "room": ROOM, "seq": ack["seq"]})
        await a2.ping()
        for conn in (a0, b1, c2):
            await conn.assert_silent(0.5, ignore=("presence",))
        # nor typing again within 2 s from the same connection
        await a0.send({"type": "typing", "room": ROOM})
        await a0.ping()
        for conn in (a2, b1, c2):
            await conn.assert_silent(0.3, ignore=("presence",))


def _members(listing: dict) -> dict[str, int]:
    return {m["user"]: m["connections"] for m in listing["members"]}


async def test_presence_is_per_user_cluster_wide(cluster: Cluster) -> None:
    alice, bob, carol = await cluster.users("alice", "bob", "carol")
    async with cluster[1].connect(bob) as b1, cluster[2].connect(carol) as c2:
        await b1.join(ROOM)
        joined = await c2.join(ROOM)
        assert joined["members"] == ["bob", "carol"]
        assert (await b1.expect("presence", room=ROOM, user="carol"))["status"] == "online"

        async with cluster[0].connect(alice) as a0:
            joined = await a0.join(ROOM)
            assert joined["members"] == ["alice", "bob", "carol"]
            for conn in (b1, c2):
                assert (await conn.expect("presence", room=ROOM, user="alice"))["status"] == "online"
            # a second device on another node: still one online member, no second announcement
            async with cluster[2].connect(alice) as a2:
                await a2.join(ROOM)
                for node, conn in ((cluster[0], a0), (cluster[1], b1), (cluster[2], c2)):
                    listing = await conn.presence(ROOM)
                    assert _members(listing) == {"alice": 2, "bob": 1, "carol": 1}, node.name
                    async with node.http() as h:
                        r = await h.get(f"/api/rooms/{ROOM}/presence", headers=auth(bob))
                    assert _members(r.json()) == {"alice": 2, "bob": 1, "carol": 1}, node.name
                # one device leaves: alice is still online (the other one is on another node)
                await a0.leave(ROOM)
                for conn in (b1, c2):
                    assert _members(await conn.presence(ROOM)) == {"alice": 1, "bob": 1, "carol": 1}
                    await conn.assert_silent(PRESENCE_GRACE_S + 0.5, ignore=("typing", "read"))
            # the last device dropped (closed, no leave): offline after the grace period, once
            for conn in (b1, c2):
                got = await conn.expect("presence", room=ROOM, user="alice", timeout=10)
                assert got["status"] == "offline"
            for conn in (b1, c2):
                assert _members(await conn.presence(ROOM)) == {"bob": 1, "carol": 1}
                await conn.assert_silent(0.5)


async def test_a_room_actor_that_starts_later_knows_who_is_present(cluster: Cluster) -> None:
    """Users joined on two nodes; the third node has no actor for the room until now."""
    alice, bob, carol, dave = await cluster.users("alice", "bob", "carol", "dave")
    async with cluster[0].connect(alice) as a0, cluster[1].connect(bob) as b1:
        await a0.join(ROOM)
        await b1.join(ROOM)
        # HTTP presence on the third node spawns its actor from the presence snapshot
        async with cluster[2].http() as h:
            r = await h.get(f"/api/rooms/{ROOM}/presence", headers=auth(dave))
        assert r.status_code == 200 and _members(r.json()) == {"alice": 1, "bob": 1}
        async with cluster[2].connect(carol) as c2:
            joined = await c2.join(ROOM)
            assert joined["members"] == ["alice", "bob", "carol"]
            assert _members(await c2.presence(ROOM)) == {"alice": 1, "bob": 1, "carol": 1}
            # and it follows changes made elsewhere afterwards
            await b1.leave(ROOM)
            got = await c2.expect("presence", room=ROOM, user="bob")
            assert got["status"] == "offline"
            assert _members(await c2.presence(ROOM)) == {"alice": 1, "carol": 1}


async def test_a_grant_made_on_one_node_is_honoured_on_the_others_at_once(cluster: Cluster) -> None:
    owner, bob = await cluster.users("owner", "bob")
    async with cluster[0].http() as h:
        r = await h.post("/api/rooms", json={"name": "secret", "private": True}, headers=auth(owner))
        assert r.status_code == 201, r.text
    async with cluster[0].connect(owner) as o0, cluster[1].connect(bob) as b1, cluster[2].connect(bob) as b2:
        await o0.join("secret")
        # refused on every node (their actors now hold the grants they read)
        for conn in (b1, b2):
            refused = await conn.request({"type": "join", "room": "secret"}, "joined")
            assert refused["type"] == "error" and refused["code"] == "forbidden", refused
        for node in (cluster[1], cluster[2]):
            async with node.http() as h:
                r = await h.get("/api/rooms/secret/messages", headers=auth(bob))
            assert r.status_code == 403
        async with cluster[0].http() as h:
            r = await h.post("/api/rooms/secret/members", json={"user": "bob"}, headers=auth(owner))
            assert r.status_code == 204, r.text
        # at once: no wait between the grant's answer and these
        joined = await b2.join("secret")
        assert joined["members"] == ["bob", "owner"]
        async with cluster[1].http() as h:
            r = await h.get("/api/rooms/secret/messages", headers=auth(bob))
        assert r.status_code == 200, r.text
        await b1.join("secret")
        ack = await b1.send_message("secret", "thanks")
        for conn in (o0, b2):
            assert (await conn.expect("message", room="secret"))["seq"] == ack["seq"]


@pytest.fixture
async def capped_cluster(tmp_path: Path):
    async with fresh_postgres_database() as db, fresh_redis_prefix() as redis:
        async with open_cluster(tmp_path, db, redis, args=("--max-connections-per-user", "4")) as running:
            yield running


async def test_the_connection_cap_counts_every_node(capped_cluster: Cluster) -> None:
    cluster = capped_cluster
    (alice,) = await cluster.users("alice")
    async with cluster[0].connect(alice), cluster[0].connect(alice), cluster[1].connect(alice):
        async with cluster[2].connect(alice):
            for node in cluster:  # four open, on three nodes: a fifth is refused everywhere
                assert await upgrade_status(node.ws_url, alice) == 429, node.name
        # one closed on the third node: room for one more, on any node (the other nodes learn
        # of the close through Redis, so the first attempts may still count four)
        deadline = trio.current_time() + 10
        while True:
            try:
                async with cluster[1].connect(alice) as again:
                    assert again.welcome is not None
                    for node in cluster:
                        assert await upgrade_status(node.ws_url, alice) == 429, node.name
                return
            except ConnectionRejected as exc:
                assert exc.status_code == 429 and trio.current_time() < deadline, exc
                await trio.sleep(0.1)
