"""PROTOCOL section 5 "Membership" and section 8: private rooms created over HTTP answer
`forbidden` to non-members for every command and endpoint; the owner's grant opens them."""

from __future__ import annotations

import pytest

from .client import auth, http


async def _setup(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": "secret", "private": True}, headers=auth(alice))
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "secret", "private": True, "owner": "alice", "seq": 0}
    return alice, bob


async def _grant(server, owner, room, user):
    async with http(server.http_url) as h:
        return await h.post(f"/api/rooms/{room}/members", json={"user": user}, headers=auth(owner))


WS_COMMANDS = [
    ({"type": "join", "room": "secret"}, "joined"),
    ({"type": "join", "room": "secret", "since": 0}, "joined"),
    ({"type": "send", "room": "secret", "id": "x", "text": "let me in"}, "ack"),
    ({"type": "history", "room": "secret"}, "history"),
    ({"type": "presence", "room": "secret"}, "presence_list"),
    ({"type": "typing", "room": "secret"}, "typing"),
    ({"type": "read", "room": "secret", "seq": 1}, "read"),
]


@pytest.mark.parametrize("cmd, reply", WS_COMMANDS, ids=[f"{c['type']}{'-since' if 'since' in c else ''}" for c, _ in WS_COMMANDS])
async def test_private_room_non_member_forbidden_ws(server, cmd, reply):
    alice, bob = await _setup(server)
    async with server.connect(bob) as b:
        err = await b.request(dict(cmd), reply)
        assert err["type"] == "error" and err["code"] == "forbidden", err


async def test_private_room_non_member_leave_still_left(server):
    alice, bob = await _setup(server)
    async with server.connect(bob) as b:
        left = await b.leave("secret")
        assert left["room"] == "secret"


async def test_private_room_non_member_forbidden_http(server):
    alice, bob = await _setup(server)
    async with http(server.http_url) as h:
        hb = auth(bob)
        r = await h.get("/api/rooms/secret/messages", headers=hb)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = await h.post("/api/rooms/secret/messages", json={"id": "x", "text": "hi"}, headers=hb)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = await h.get("/api/rooms/secret/presence", headers=hb)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = await h.post("/api/rooms/secret/members", json={"user": "bob"}, headers=hb)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        rooms = (await h.get("/api/rooms", headers=hb)).json()["rooms"]
        assert "secret" not in {x["name"] for x in rooms}


async def test_private_room_owner_can_use_it(server):
    alice, bob = await _setup(server)
    async with server.connect(alice) as a:
        joined = await a.join("secret")
        assert joined["members"] == ["alice"]
        ack = await a.send_message("secret", "alone")
        assert ack["type"] == "ack" and ack["seq"] == 1


async def test_private_room_owner_adds_member_then_they_can_join(server):
    alice, bob = await _setup(server)
    r = await _grant(server, alice, "secret", "bob")
    assert r.status_code == 204 and r.content == b""
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("secret")
        joined = await b.join("secret")
        assert sorted(joined["members"]) == ["alice", "bob"]
        ack = await b.send_message("secret", "thanks")
        assert ack["type"] == "ack"
        msg = await a.expect("message", room="secret")
        assert msg["from"] == "bob"
        page = await b.history("secret")
        assert [m["text"] for m in page["messages"]] == ["thanks"]
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/secret/messages", headers=auth(bob))
        assert r.status_code == 200
        rooms = {x["name"]: x for x in (await h.get("/api/rooms", headers=auth(bob))).json()["rooms"]}
        assert rooms["secret"]["private"] is True and rooms["secret"]["members"] == 2


async def test_private_room_grant_is_idempotent(server):
    alice, bob = await _setup(server)
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204


async def test_private_room_add_unknown_user_404(server):
    alice, bob = await _setup(server)
    r = await _grant(server, alice, "secret", "nobody")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_private_room_member_cannot_add_others(server):
    alice, bob = await _setup(server)
    await server.user("carol")
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204
    r = await _grant(server, bob, "secret", "carol")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


async def test_private_room_welcome_lists_it_only_after_joining(server):
    alice, bob = await _setup(server)
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204
    async with server.connect(bob) as b:
        assert all(r["room"] != "secret" for r in b.welcome["rooms"])
        await b.join("secret")
    async with server.connect(bob) as b:
        assert {"room": "secret", "seq": 0, "read": 0} in b.welcome["rooms"]


async def test_private_room_leave_keeps_grant(server):
    alice, bob = await _setup(server)
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204
    async with server.connect(bob) as b:
        await b.join("secret")
        await b.leave("secret")
        err = await b.send_message("secret", "after leave")
        assert err["type"] == "error" and err["code"] == "not_joined"
        joined = await b.join("secret")
        assert joined["type"] == "joined"
    async with server.connect(bob) as b:
        assert any(r["room"] == "secret" for r in b.welcome["rooms"])


async def test_private_room_listed_for_granted_user(server):
    alice, bob = await _setup(server)
    carol = await server.user("carol")
    assert (await _grant(server, alice, "secret", "bob")).status_code == 204
    async with http(server.http_url) as h:
        for token, visible in [(alice, True), (bob, True), (carol, False)]:
            names = {x["name"] for x in (await h.get("/api/rooms", headers=auth(token))).json()["rooms"]}
            assert ("secret" in names) is visible
