"""PROTOCOL section 5: `join` (creation, members, replay), `leave`, presence events and the
`presence` query, including the grace period of a dropped connection."""

from __future__ import annotations

import pytest
import trio

from .client import auth, http


async def _users(server, *names):
    return [await server.user(n) for n in names]


# --------------------------------------------------------------------------- join


async def test_join_creates_public_room(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "join", "room": "fresh"})
        joined = await a.recv()
        assert joined == {"type": "joined", "room": "fresh", "seq": 0, "members": ["alice"], "recovered": True}
    async with http(server.http_url) as h:
        rooms = (await h.get("/api/rooms", headers=auth(alice))).json()["rooms"]
    fresh = [r for r in rooms if r["name"] == "fresh"]
    assert fresh and fresh[0]["private"] is False and fresh[0]["seq"] == 0


async def test_join_reply_echoes_ref(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "join", "room": "r1", "ref": 42})
        joined = await a.recv()
        assert joined["type"] == "joined" and joined["ref"] == 42


async def test_join_members_lists_present_users(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b, server.connect(bob) as b2:
        await a.join("general")
        joined = await b.join("general")
        assert sorted(joined["members"]) == ["alice", "bob"]
        joined = await b2.join("general")
        assert sorted(joined["members"]) == ["alice", "bob"]


async def test_join_presence_online_to_others(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b, server.connect(bob) as b2:
        await a.join("general")
        await b.join("general")
        ev = await a.expect("presence")
        assert ev == {"type": "presence", "room": "general", "user": "bob", "status": "online"}
        # a second connection of a user already present is not news
        await b2.join("general")
        await a.assert_silent(0.5)
        # the joining connection is not told about itself
        await b.assert_silent(0.1, ignore=())


async def test_join_since_replays_in_order_then_joined_recovered(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        await a.join("general")
        acks = [await a.send_message("general", f"text {i}", id=f"c{i}") for i in range(1, 6)]
    async with server.connect(bob) as b:
        await b.send({"type": "join", "room": "general", "since": 2})
        replay = [await b.recv() for _ in range(3)]
        joined = await b.recv()
    for seq, m in zip((3, 4, 5), replay):
        ack = acks[seq - 1]
        assert m == {
            "type": "message",
            "room": "general",
            "seq": seq,
            "id": f"c{seq}",
            "from": "alice",
            "text": f"text {seq}",
            "ts": ack["ts"],
        }
    assert joined["type"] == "joined"
    assert joined["seq"] == 5 and joined["recovered"] is True
    assert "bob" in joined["members"]  # alice may still be inside her grace period


async def test_join_since_zero_replays_everything(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        for i in range(4):
            await a.send_message("general", f"t{i}")
    async with server.connect(alice) as a2:
        await a2.send({"type": "join", "room": "general", "since": 0})
        got = [await a2.recv() for _ in range(5)]
    assert [e["type"] for e in got] == ["message"] * 4 + ["joined"]
    assert [e["seq"] for e in got[:4]] == [1, 2, 3, 4]
    assert got[4]["recovered"] is True and got[4]["seq"] == 4


async def test_join_since_current_seq_replays_nothing(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send_message("general", "one")
        await a.send_message("general", "two")
    async with server.connect(alice) as a2:
        await a2.send({"type": "join", "room": "general", "since": 2})
        joined = await a2.recv()
        assert joined["type"] == "joined" and joined["seq"] == 2 and joined["recovered"] is True


async def test_join_without_since_replays_nothing_recovered_true(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send_message("general", "one")
    async with server.connect(alice) as a2:
        await a2.send({"type": "join", "room": "general"})
        joined = await a2.recv()
        assert joined["type"] == "joined" and joined["seq"] == 1 and joined["recovered"] is True


class TestJoinSinceLimit:
    @pytest.fixture
    def server_overrides(self):
        return {"rate_per_second": 100000, "rate_burst": 100000}

    async def _fill(self, server, token, room, count):
        async with server.connect(token) as a:
            await a.join(room)
            for i in range(count):
                await a.send({"type": "send", "room": room, "id": f"f{i}", "text": f"fill {i}"})
            seqs = []
            while len(seqs) < count:
                ev = await a.expect("ack")
                seqs.append(ev["seq"])
            assert sorted(seqs) == list(range(1, count + 1))

    async def test_join_since_more_than_1000_missed_no_replay_recovered_false(self, server):
        alice, bob = await _users(server, "alice", "bob")
        await self._fill(server, alice, "busy", 1001)
        async with server.connect(bob) as b:
            await b.send({"type": "join", "room": "busy", "since": 0})
            joined = await b.recv(timeout=30)
            assert joined["type"] == "joined", joined
            assert joined["recovered"] is False and joined["seq"] == 1001
            # paging after `since` still works
            page = await b.history("busy", after=0, limit=200)
            assert [m["seq"] for m in page["messages"]] == list(range(1, 201)) and page["more"] is True

    async def test_join_since_exactly_1000_missed_replays_all(self, server):
        alice, bob = await _users(server, "alice", "bob")
        await self._fill(server, alice, "busy", 1001)
        async with server.connect(bob) as b:
            await b.send({"type": "join", "room": "busy", "since": 1})
            seqs = []
            for _ in range(1000):
                ev = await b.recv(timeout=30)
                assert ev["type"] == "message", ev
                seqs.append(ev["seq"])
            joined = await b.recv(timeout=30)
        assert seqs == list(range(2, 1002))
        assert joined["type"] == "joined" and joined["recovered"] is True


# --------------------------------------------------------------------------- leave


async def test_leave_replies_left(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send({"type": "leave", "room": "general", "ref": "L"})
        assert await a.recv() == {"type": "left", "room": "general", "ref": "L"}


async def test_leave_room_never_joined_replies_left(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "leave", "room": "nowhere"})
        assert await a.recv() == {"type": "left", "room": "nowhere"}
        await a.send({"type": "leave", "room": "dm:bob:carol"})
        assert await a.recv() == {"type": "left", "room": "dm:bob:carol"}


class TestLeaveOfflineAtOnce:
    @pytest.fixture
    def server_overrides(self):
        return {"presence_grace_s": 60}

    async def test_leave_announces_offline_at_once(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a, server.connect(bob) as b:
            await a.join("general")
            await b.join("general")
            await a.expect("presence", user="bob", status="online")
            await b.leave("general")
            ev = await a.expect("presence", user="bob")
            assert ev == {"type": "presence", "room": "general", "user": "bob", "status": "offline"}
            lst = await a.presence("general")
            assert [m["user"] for m in lst["members"]] == ["alice"]

    async def test_leave_of_one_device_keeps_user_online(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a, server.connect(bob) as b1, server.connect(bob) as b2:
            await a.join("general")
            await b1.join("general")
            await b2.join("general")
            await a.expect("presence", user="bob", status="online")
            await b1.leave("general")
            await a.assert_silent(0.5)
            lst = await a.presence("general")
            assert {m["user"]: m["connections"] for m in lst["members"]} == {"alice": 1, "bob": 1}
            await b2.leave("general")
            await a.expect("presence", user="bob", status="offline")


async def test_leave_ends_membership(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send_message("general", "hi")
        await a.leave("general")
        err = await a.send_message("general", "after leave")
        assert err["type"] == "error" and err["code"] == "not_joined"
    async with server.connect(alice) as a2:
        assert all(r["room"] != "general" for r in a2.welcome["rooms"])


async def test_leave_then_no_more_messages(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await b.leave("general")
        await a.send_message("general", "you left")
        await b.assert_silent(0.5)


# --------------------------------------------------------------------------- presence query


async def test_presence_query_connection_counts(server):
    alice, bob, carol = await _users(server, "alice", "bob", "carol")
    async with server.connect(alice) as a1, server.connect(alice) as a2, server.connect(bob) as b, server.connect(
        carol
    ) as c, server.connect(alice) as a3:
        await a1.join("general")
        await a2.join("general")
        await b.join("general")
        # a3 is connected but not joined: it does not count
        await c.send({"type": "presence", "room": "general", "ref": 9})
        lst = await c.expect("presence_list")
        assert set(lst) == {"type", "room", "members", "ref"}
        assert lst["room"] == "general" and lst["ref"] == 9
        assert sorted(lst["members"], key=lambda m: m["user"]) == [
            {"user": "alice", "connections": 2},
            {"user": "bob", "connections": 1},
        ]


async def test_presence_query_public_room_without_join(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        lst = await b.presence("general")
        assert lst["type"] == "presence_list"
        assert lst["members"] == [{"user": "alice", "connections": 1}]


class TestPresenceGrace:
    @pytest.fixture
    def server_overrides(self):
        return {"presence_grace_s": 5}

    async def test_dropped_user_shows_zero_connections_within_grace(self, server):
        alice, bob, carol = await _users(server, "alice", "bob", "carol")
        async with server.connect(alice) as a:
            await a.join("general")
            async with server.connect(bob) as b:
                await b.join("general")
                await a.expect("presence", user="bob", status="online")
            # bob dropped without `leave`: still a member for the grace period, with 0 connections
            with trio.fail_after(4):
                while True:
                    lst = await a.presence("general")
                    counts = {m["user"]: m["connections"] for m in lst["members"]}
                    assert "bob" in counts, lst
                    if counts["bob"] == 0:
                        break
                    await trio.sleep(0.05)
            assert counts == {"alice": 1, "bob": 0}
            # someone joining now sees bob as present
            async with server.connect(carol) as c:
                joined = await c.join("general")
                assert sorted(joined["members"]) == ["alice", "bob", "carol"]
            async with http(server.http_url) as h:
                body = (await h.get("/api/rooms/general/presence", headers=auth(alice))).json()
            assert {"user": "bob", "connections": 0} in body["members"]
            # no offline yet (nothing said about bob)
            for ev in a.buffer:
                assert not (ev["type"] == "presence" and ev["user"] == "bob"), ev

    async def test_quick_reconnect_shows_no_flicker(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a:
            await a.join("general")
            async with server.connect(bob) as b:
                await b.join("general")
                await a.expect("presence", user="bob", status="online")
            async with server.connect(bob) as b2:
                await b2.join("general")
                await a.assert_silent(1.0)
                lst = await a.presence("general")
                assert {m["user"]: m["connections"] for m in lst["members"]} == {"alice": 1, "bob": 1}


async def test_dropped_user_offline_after_grace(server):
    """The fixture's grace is 0.5 s."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        await a.join("general")
        async with server.connect(bob) as b:
            await b.join("general")
            await a.expect("presence", user="bob", status="online")
        ev = await a.expect("presence", user="bob")
        assert ev == {"type": "presence", "room": "general", "user": "bob", "status": "offline"}
        lst = await a.presence("general")
        assert lst["members"] == [{"user": "alice", "connections": 1}]


async def test_dropped_tcp_offline_after_grace(server):
    """A connection that vanishes without a close frame is a drop too."""
    from .client import raw_connect

    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        await a.join("general")
        async with raw_connect(server.ws_url, bob) as rb:
            assert (await rb.recv_json())["type"] == "welcome"
            await rb.send_json({"type": "join", "room": "general"})
            await rb.expect("joined")
            await a.expect("presence", user="bob", status="online")
        ev = await a.expect("presence", user="bob")
        assert ev["status"] == "offline"


async def test_presence_membership_still_held_after_drop(server):
    """A drop (no `leave`) keeps the membership: the next welcome lists the room."""
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
    async with server.connect(alice) as a2:
        assert {"room": "general", "seq": 0, "read": 0} in a2.welcome["rooms"]


async def test_join_room_name_64_chars_and_all_allowed_characters(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        for room in ("r" * 64, "A.b-c_9", "x", "..."):
            joined = await a.join(room)
            assert joined["room"] == room


async def test_drop_of_one_device_keeps_user_online(server):
    """Presence is per user: a dropped device does not make its user offline."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b1:
        await a.join("general")
        await b1.join("general")
        await a.expect("presence", user="bob", status="online")
        async with server.connect(bob) as b2:
            await b2.join("general")
        await a.assert_silent(1.5)  # well past the 0.5 s grace
        lst = await a.presence("general")
        assert {m["user"]: m["connections"] for m in lst["members"]} == {"alice": 1, "bob": 1}
