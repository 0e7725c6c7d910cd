"""Direct messages across nodes (PROTOCOL sections 6 and 9): every device of the recipient and
the sender's other devices, wherever they are connected; offline delivery on any node."""

from __future__ import annotations

from .harness import Cluster, seqs


async def test_a_dm_reaches_every_device_of_both_users_on_every_node(cluster: Cluster) -> None:
    alice, bob = await cluster.users("alice", "bob")
    async with cluster[0].connect(alice) as a0, cluster[1].connect(alice) as a1, \
            cluster[1].connect(bob) as b1, cluster[2].connect(bob) as b2, cluster[0].connect(bob) as b0:
        ack = await a0.dm("bob", "hi bob", id="d-1")
        assert ack["type"] == "ack" and ack["room"] == "dm:alice:bob" and ack["seq"] == 1, ack
        for conn in (a1, b1, b2, b0):  # nobody joined the direct room
            got = await conn.expect("message", room="dm:alice:bob", id="d-1")
            assert (got["seq"], got["ts"], got["from"], got["text"]) == (1, ack["ts"], "alice", "hi bob")

        # the answer, from another node; then a retry of it through a third one
        reply = await b2.dm("alice", "hi alice", id="d-2")
        assert reply["seq"] == 2
        for conn in (a0, a1, b1, b0):
            got = await conn.expect("message", room="dm:alice:bob", id="d-2")
            assert (got["seq"], got["ts"]) == (2, reply["ts"])
        retry = await b1.dm("alice", "hi alice", id="d-2")
        assert (retry["type"], retry["seq"], retry["ts"]) == ("ack", reply["seq"], reply["ts"])
        # echo filtering: neither sending connection got its own message; nothing twice
        for conn in (a0, a1, b1, b2, b0):
            await conn.assert_silent(0.5)


async def test_offline_dms_replay_after_welcome_on_any_node_until_read(cluster: Cluster) -> None:
    alice, dave = await cluster.users("alice", "dave")
    async with cluster[0].connect(alice) as a0:
        acks = [await a0.dm("dave", f"while you were away {i}", id=f"away-{i}") for i in range(3)]
    assert seqs(acks) == [1, 2, 3]

    for node in (cluster[2], cluster[1]):  # not confirmed: sent again at the next connection
        async with node.connect(dave) as d:
            assert d.welcome is not None and d.welcome["node"] == node.name
            assert [(m["room"], m["seq"], m["id"]) for m in d.offline] == \
                [("dm:alice:dave", i + 1, f"away-{i}") for i in range(3)]
            assert {"room": "dm:alice:dave", "seq": 3, "read": 0} in d.welcome["rooms"]
    async with cluster[1].connect(dave) as d:
        await d.send({"type": "read", "room": "dm:alice:dave", "seq": 2})
        await d.ping()  # the read is committed before the next command's answer
    async with cluster[0].connect(dave) as d:
        assert [m["seq"] for m in d.offline] == [3]
        assert {"room": "dm:alice:dave", "seq": 3, "read": 2} in d.welcome["rooms"]


async def test_a_dm_to_a_user_connected_only_elsewhere_arrives_live(cluster: Cluster) -> None:
    """The recipient's node has no actor for the direct room yet: the bus event spawns it."""
    alice, erin = await cluster.users("alice", "erin")
    async with cluster[2].connect(erin) as e2:
        async with cluster[0].connect(alice) as a0:
            for i in range(5):
                ack = await a0.dm("erin", f"live {i}", id=f"live-{i}")
                assert ack["seq"] == i + 1
        got = await e2.messages("dm:alice:erin", 5)
        assert seqs(got) == [1, 2, 3, 4, 5]
        assert [m["text"] for m in got] == [f"live {i}" for i in range(5)]
        await e2.assert_silent(0.5)
