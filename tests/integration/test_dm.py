"""PROTOCOL section 5 `dm` and section 6: direct rooms, delivery to every device, offline
delivery between `welcome` and `synced`, at-least-once until `read`."""

from __future__ import annotations

import pytest

from .client import auth, http


async def _users(server, *names):
    return [await server.user(n) for n in names]


async def test_dm_ack_room_name(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.send({"type": "dm", "to": "bob", "id": "d1", "text": "hi", "ref": "D"})
        ack = await a.expect("ack")
        assert set(ack) == {"type", "id", "room", "seq", "ts", "ref"}
        assert ack["room"] == "dm:alice:bob" and ack["seq"] == 1 and ack["id"] == "d1" and ack["ref"] == "D"
        back = await b.dm("alice", "hello")
        assert back["room"] == "dm:alice:bob" and back["seq"] == 2


async def test_dm_room_ordered_by_code_point(server):
    """'Zed' < 'amy' by code point (upper case sorts first), exactly as spelled."""
    zed, amy = await _users(server, "Zed", "amy")
    async with server.connect(amy) as a:
        ack = await a.dm("Zed", "hi")
        assert ack["room"] == "dm:Zed:amy"
    async with server.connect(zed) as z:
        ack = await z.dm("amy", "hi back")
        assert ack["room"] == "dm:Zed:amy" and ack["seq"] == 2


async def test_dm_delivered_to_every_recipient_connection_and_sender_other_connections(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a1, server.connect(alice) as a2, server.connect(
        bob
    ) as b1, server.connect(bob) as b2:
        ack = await a1.dm("bob", "to all your devices", id="all")
        expected = {
            "type": "message",
            "room": "dm:alice:bob",
            "seq": ack["seq"],
            "id": "all",
            "from": "alice",
            "text": "to all your devices",
            "ts": ack["ts"],
        }
        assert await b1.expect("message") == expected
        assert await b2.expect("message") == expected
        assert await a2.expect("message") == expected
        await a1.assert_silent(0.3)


async def test_dm_joined_connections_get_it_exactly_once(server):
    """Joining the dm room does not double the delivery, and the sender still gets no echo."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a1, server.connect(alice) as a2, server.connect(bob) as b1, server.connect(
        bob
    ) as b2:
        await a1.dm("bob", "open the room")
        for c in (a2, b1, b2):
            await c.expect("message")
        for c in (a1, a2, b1):
            await c.join("dm:alice:bob")
        ack = await a1.dm("bob", "once")
        for c in (a2, b1, b2):
            msg = await c.expect("message")
            assert msg["seq"] == ack["seq"]
        for c in (a1, a2, b1, b2):
            await c.assert_silent(0.3, ignore=("presence",))


async def test_dm_with_meta(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.dm("bob", "x", meta={"k": [1]})
        msg = await b.expect("message")
        assert msg["meta"] == {"k": [1]}


async def test_dm_unknown_user_not_found(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        err = await a.dm("nobody", "hello?")
        assert err["type"] == "error" and err["code"] == "not_found"


async def test_dm_to_self_bad_request(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        err = await a.dm("alice", "me")
        assert err["type"] == "error" and err["code"] == "bad_request"


async def test_dm_idempotent_retry(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        first = await a.dm("bob", "once", id="dd")
        await b.expect("message", id="dd")
        again = await a.dm("bob", "once", id="dd")
        assert (again["seq"], again["ts"], again["room"]) == (first["seq"], first["ts"], first["room"])
        await b.assert_silent(0.5)


async def test_dm_offline_delivery_after_welcome_before_synced(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        acks = [await a.dm("bob", f"while you were away {i}", id=f"o{i}") for i in range(3)]
    async with server.connect(bob, synced=False) as b:
        assert {"room": "dm:alice:bob", "seq": 3, "read": 0} in b.welcome["rooms"]
        got = [await b.recv() for _ in range(4)]
    assert [e["type"] for e in got] == ["message", "message", "message", "synced"]
    assert [(m["room"], m["seq"], m["id"], m["from"], m["ts"]) for m in got[:3]] == [
        ("dm:alice:bob", x["seq"], f"o{i}", "alice", x["ts"]) for i, x in enumerate(acks)
    ]
    assert got[3] == {"type": "synced"}


async def test_dm_offline_from_several_rooms(server):
    alice, bob, carol = await _users(server, "alice", "bob", "carol")
    async with server.connect(alice) as a, server.connect(carol) as c:
        await a.dm("bob", "from alice 1")
        await c.dm("bob", "from carol 1")
        await a.dm("bob", "from alice 2")
    async with server.connect(bob) as b:
        by_room: dict[str, list[int]] = {}
        for m in b.offline:
            assert m["type"] == "message"
            by_room.setdefault(m["room"], []).append(m["seq"])
        assert by_room == {"dm:alice:bob": [1, 2], "dm:bob:carol": [1]}


async def test_dm_offline_resent_until_read(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        for i in range(3):
            await a.dm("bob", f"m{i}")
    async with server.connect(bob) as b:
        assert [m["seq"] for m in b.offline] == [1, 2, 3]
    async with server.connect(bob) as b:  # not confirmed: sent again
        assert [m["seq"] for m in b.offline] == [1, 2, 3]
        await b.send({"type": "read", "room": "dm:alice:bob", "seq": 2})
        await b.ping()  # no reply to `read`; make sure the connection is still fine
    async with server.connect(bob) as b:
        assert {"room": "dm:alice:bob", "seq": 3, "read": 2} in b.welcome["rooms"]
        assert [m["seq"] for m in b.offline] == [3]
        await b.send({"type": "read", "room": "dm:alice:bob", "seq": 3})
        await b.ping()
    async with server.connect(bob) as b:
        assert b.offline == []


async def test_dm_read_own_dm_room_without_join(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b1, server.connect(bob) as b2:
        await a.dm("bob", "hello")
        await b1.expect("message")
        await b2.expect("message")
        await b1.send({"type": "read", "room": "dm:alice:bob", "seq": 1, "ref": "rd"})
        pong = await b1.ping()
        assert pong["type"] == "pong"
        for e in b1.buffer:
            assert e["type"] != "error", e


async def test_dm_sender_cursor_moves_so_no_offline_echo(server):
    """Sending moves the sender's cursor: the sender's next connection gets no offline copy."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        await a.dm("bob", "one")
        await a.dm("bob", "two")
    async with server.connect(alice) as a:
        assert {"room": "dm:alice:bob", "seq": 2, "read": 2} in a.welcome["rooms"]
        assert a.offline == []


async def test_dm_offline_at_most_1000_oldest_per_room(server_factory):
    srv = await server_factory(rate_per_second=100000, rate_burst=100000)
    alice = await srv.user("alice")
    bob = await srv.user("bob")
    async with srv.connect(alice) as a:
        for i in range(1001):
            await a.send({"type": "dm", "to": "bob", "id": f"k{i}", "text": f"n{i}"})
        seqs = []
        while len(seqs) < 1001:
            seqs.append((await a.expect("ack", timeout=30))["seq"])
        assert sorted(seqs) == list(range(1, 1002))
    async with srv.connect(bob, synced=False) as b:
        got = []
        while True:
            ev = await b.recv(timeout=30)
            if ev["type"] == "synced":
                break
            got.append(ev["seq"])
        assert got == list(range(1, 1001))


async def test_dm_room_forbidden_to_third_party(server):
    alice, bob, carol = await _users(server, "alice", "bob", "carol")
    async with server.connect(alice) as a, server.connect(carol) as c:
        await a.dm("bob", "private")
        for cmd, reply in [
            ({"type": "join", "room": "dm:alice:bob"}, "joined"),
            ({"type": "history", "room": "dm:alice:bob"}, "history"),
            ({"type": "presence", "room": "dm:alice:bob"}, "presence_list"),
            ({"type": "send", "room": "dm:alice:bob", "id": "x", "text": "x"}, "ack"),
            ({"type": "typing", "room": "dm:alice:bob"}, "typing"),
            ({"type": "read", "room": "dm:alice:bob", "seq": 1}, "read"),
        ]:
            err = await c.request(cmd, reply)
            assert err["type"] == "error" and err["code"] == "forbidden", (cmd, err)
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/dm:alice:bob/messages", headers=auth(carol))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"


async def test_dm_participant_can_join_and_page_history(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.dm("bob", "one")
        await b.expect("message")
        joined = await b.join("dm:alice:bob")
        assert joined["seq"] == 1
        page = await b.history("dm:alice:bob")
        assert [m["text"] for m in page["messages"]] == ["one"]
        ack = await b.send_message("dm:alice:bob", "sent with send")
        assert ack["type"] == "ack" and ack["room"] == "dm:alice:bob"


async def test_dm_listed_in_rooms_api_for_participants_only(server):
    alice, bob, carol = await _users(server, "alice", "bob", "carol")
    async with server.connect(alice) as a:
        await a.dm("bob", "one")
    async with http(server.http_url) as h:
        for token, visible in [(alice, True), (bob, True), (carol, False)]:
            rooms = (await h.get("/api/rooms", headers=auth(token))).json()["rooms"]
            names = {r["name"] for r in rooms}
            assert ("dm:alice:bob" in names) is visible


@pytest.mark.parametrize("to", ["", 5, None, "bad name!"])
async def test_dm_bad_to_bad_request(server, to):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "dm", "to": to, "id": "x", "text": "x", "ref": "b"})
        err = await a.recv()
        assert err["type"] == "error" and err["ref"] == "b"
        assert err["code"] in ("bad_request", "not_found") if to == "bad name!" else err["code"] == "bad_request"


async def test_dm_username_case_sensitive_not_found(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a:
        err = await a.dm("Bob", "hi")
        assert err["type"] == "error" and err["code"] == "not_found"


async def test_dm_room_send_and_typing_need_join(server):
    """Only `read` is exempt from joining on one's own direct rooms."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.dm("bob", "hi")
        await b.expect("message")
        err = await b.send_message("dm:alice:bob", "via send, not joined")
        assert err["type"] == "error" and err["code"] == "not_joined"
        err = await b.request({"type": "typing", "room": "dm:alice:bob"}, "typing")
        assert err["type"] == "error" and err["code"] == "not_joined"
        page = await b.history("dm:alice:bob")
        assert page["type"] == "history"
