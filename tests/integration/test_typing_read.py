"""PROTOCOL section 5 `typing` (relay, 2 s leading-edge throttle) and `read` (relay to other
connections incl. own devices, forward-only, clamping, silent move on send)."""

from __future__ import annotations

import trio


async def _users(server, *names):
    return [await server.user(n) for n in names]


# --------------------------------------------------------------------------- typing


async def test_typing_relayed_to_others(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await a.send({"type": "typing", "room": "general"})
        ev = await b.expect("typing")
        assert ev == {"type": "typing", "room": "general", "user": "alice"}
        await a.assert_silent(0.3, ignore=("presence",))  # no reply to the sender


async def test_typing_throttled_2s(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await a.send({"type": "typing", "room": "general"})
        await b.expect("typing", user="alice")
        await a.send({"type": "typing", "room": "general"})
        await a.send({"type": "typing", "room": "general"})
        await b.assert_silent(0.5, ignore=("presence",))
        await a.ping()  # the throttled ones got no reply either
        await trio.sleep(2.2)
        await a.send({"type": "typing", "room": "general"})
        await b.expect("typing", user="alice")


async def test_typing_throttle_is_per_connection(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b1, server.connect(bob) as b2:
        await a.join("general")
        await b1.join("general")
        await b2.join("general")
        await b1.send({"type": "typing", "room": "general"})
        await a.expect("typing", user="bob")
        await b2.send({"type": "typing", "room": "general"})
        await a.expect("typing", user="bob")


async def test_typing_not_stored(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await a.send({"type": "typing", "room": "general"})
        await b.expect("typing")
        page = await b.history("general")
        assert page["messages"] == []


async def test_typing_not_joined(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "typing", "room": "general", "ref": "t"})
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == "not_joined" and err["ref"] == "t"


# --------------------------------------------------------------------------- read


async def test_read_relayed_to_others_and_own_devices(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b1, server.connect(bob) as b2:
        for c in (a, b1, b2):
            await c.join("general")
        for i in range(3):
            await a.send_message("general", f"m{i}")
        await b1.messages("general", 3)
        await b2.messages("general", 3)
        await b1.send({"type": "read", "room": "general", "seq": 2})
        expected = {"type": "read", "room": "general", "user": "bob", "seq": 2}
        assert await a.expect("read") == expected
        assert await b2.expect("read") == expected
        await b1.assert_silent(0.3, ignore=("presence",))  # no reply to the reader's own connection


async def test_read_forward_only(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        for i in range(3):
            await a.send_message("general", f"m{i}")
        await b.send({"type": "read", "room": "general", "seq": 2})
        await a.expect("read", user="bob", seq=2)
        await b.send({"type": "read", "room": "general", "seq": 1})
        await b.send({"type": "read", "room": "general", "seq": 2})
        await b.send({"type": "read", "room": "general", "seq": 0})
        await a.assert_silent(0.5, ignore=("presence",))
        await b.send({"type": "read", "room": "general", "seq": 3})
        await a.expect("read", user="bob", seq=3)
    async with server.connect(bob) as b:
        assert {"room": "general", "seq": 3, "read": 3} in b.welcome["rooms"]


async def test_read_clamped_to_last_seq(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        for i in range(3):
            await a.send_message("general", f"m{i}")
        await b.send({"type": "read", "room": "general", "seq": 100})
        ev = await a.expect("read", user="bob")
        assert ev["seq"] == 3
        # the clamped cursor is the new cursor: another over-the-top read is not above it
        await b.send({"type": "read", "room": "general", "seq": 500})
        await a.assert_silent(0.5, ignore=("presence",))
    async with server.connect(bob) as b:
        assert {"room": "general", "seq": 3, "read": 3} in b.welcome["rooms"]


async def test_read_on_empty_room_clamped_to_zero_ignored(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await b.send({"type": "read", "room": "general", "seq": 10})
        await a.assert_silent(0.5, ignore=("presence",))


async def test_read_not_joined(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.send({"type": "read", "room": "general", "seq": 1, "ref": "r"})
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == "not_joined" and err["ref"] == "r"


async def test_read_bad_seq_bad_request(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        for seq in (-1, "1", 1.5, None, True):
            await a.send({"type": "read", "room": "general", "seq": seq, "ref": "b"})
            err = await a.recv()
            assert err["type"] == "error" and err["code"] == "bad_request", (seq, err)


async def test_send_moves_sender_cursor_silently(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a1, server.connect(alice) as a2, server.connect(bob) as b:
        for c in (a1, a2, b):
            await c.join("general")
        await a1.send_message("general", "first")
        last = await a1.send_message("general", "second")
        await b.messages("general", 2)
        await a2.messages("general", 2)
        # no `read` event anywhere for the implicit cursor move
        await b.assert_silent(0.4, ignore=("presence",))
        await a2.assert_silent(0.1, ignore=("presence",))
    async with server.connect(alice) as a3:
        assert {"room": "general", "seq": last["seq"], "read": last["seq"]} in a3.welcome["rooms"]
