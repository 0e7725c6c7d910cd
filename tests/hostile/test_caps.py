"""Per-user caps (PROTOCOL sections 2 and 7): connect cost must not grow without bound.

Before these caps one connection joined 10,000 rooms (10,001 actors alive); every later
connect of that user sent a 400 KB welcome after a 10,000-row query, and 300 such upgrades
starved another user's welcome for 16 s. Now: at most `max_rooms_per_user` memberships
(`too_large` beyond), at most `max_connections_per_user` connections (HTTP 429 on the
upgrade), `history` counts against the token bucket, and the store reads made for clients are
shared out per user, round-robin.
"""

from __future__ import annotations

import pytest
import trio

from integration.client import auth, http, upgrade_status

ROOM_CAP = 5
CONN_CAP = 3


@pytest.fixture
def server_overrides():
    return {"max_rooms_per_user": ROOM_CAP, "max_connections_per_user": CONN_CAP}


async def test_a_join_beyond_the_room_cap_is_too_large(server) -> None:
    token = await server.user("alice")
    async with server.connect(token) as alice:
        for i in range(ROOM_CAP):
            await alice.join(f"room{i}")
        refused = await alice.request({"type": "join", "room": "one-more"}, "joined")
        assert refused["type"] == "error" and refused["code"] == "too_large", refused
        async with http(server.http_url) as h:           # nothing was created for the refused join
            listed = (await h.get("/api/rooms", headers=auth(token))).json()["rooms"]
        assert "one-more" not in {room["name"] for room in listed}
        await alice.join("room0")                        # already a member: not a new membership
        await alice.leave("room1")
        await alice.join("one-more")                     # a slot freed by the leave
    async with server.connect(token) as again:
        assert len(again.welcome["rooms"]) == ROOM_CAP
        assert "one-more" in {r["room"] for r in again.welcome["rooms"]}


async def test_direct_rooms_count_against_the_cap_of_both_users(server) -> None:
    alice = await server.user("alice")
    await server.user("bob")
    carol = await server.user("carol")
    async with server.connect(alice) as a:
        for i in range(ROOM_CAP):
            await a.join(f"room{i}")
        refused = await a.dm("bob", "hello")
        assert refused["type"] == "error" and refused["code"] == "too_large", refused
    async with server.connect(carol) as c:
        refused = await c.dm("alice", "hi")               # alice is full: no new direct room
        assert refused["type"] == "error" and refused["code"] == "too_large", refused
        assert (await c.dm("bob", "hi"))["type"] == "ack"


async def test_creating_a_room_over_http_beyond_the_cap_is_413(server) -> None:
    token = await server.user("alice")
    async with http(server.http_url) as h:
        for i in range(ROOM_CAP):
            r = await h.post("/api/rooms", json={"name": f"own{i}"}, headers=auth(token))
            assert r.status_code == 201, r.text
        r = await h.post("/api/rooms", json={"name": "own-more", "private": True}, headers=auth(token))
        assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
        r = await h.get("/api/rooms", headers=auth(token))
        assert "own-more" not in {room["name"] for room in r.json()["rooms"]}


async def test_connections_beyond_the_cap_are_refused_with_429(server) -> None:
    token = await server.user("alice")
    async with server.connect(token), server.connect(token), server.connect(token, auth="query"):
        assert await upgrade_status(server.ws_url, token) == 429
        assert await upgrade_status(server.ws_url, token, auth="query") == 429
        # a token-less upgrade authenticates in its first frame: refused by a close instead
        async with server.connect(token, auth="frame", welcome=False) as late:
            assert await late.expect_close() == 1008
        assert await upgrade_status(server.ws_url, await server.user("bob")) == 101
    # the slots come back as connections close
    async with server.connect(token):
        pass


async def test_racing_upgrades_never_exceed_the_cap(server) -> None:
    token = await server.user("alice")
    outcomes: list[str] = []
    release = trio.Event()

    async def one() -> None:
        try:
            async with server.connect(token, welcome=False) as conn:
                first = await conn.recv()
                outcomes.append(first["type"])
                await release.wait()
        except Exception as exc:  # refused upgrades raise from the client library
            outcomes.append(type(exc).__name__)

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(one)
        with trio.fail_after(20):
            while len(outcomes) < 12:
                await trio.sleep(0.05)
        release.set()
    assert outcomes.count("welcome") <= CONN_CAP
    assert outcomes.count("welcome") >= 1


@pytest.mark.parametrize("server_overrides", [{"rate_per_second": 0.01, "rate_burst": 3}])
async def test_history_draws_from_the_token_bucket(server) -> None:
    token = await server.user("alice")
    async with server.connect(token) as alice:
        await alice.join("general")
        replies = [await alice.history("general") for _ in range(6)]
    assert [r["type"] for r in replies[:3]] == ["history"] * 3
    assert {r.get("code") for r in replies[3:]} == {"rate_limited"}


@pytest.mark.parametrize("server_overrides", [{"max_rooms_per_user": 1000, "max_connections_per_user": 1000}])
async def test_one_users_connect_flood_does_not_queue_another_users_welcome(server) -> None:
    """Mallory is in 1,000 rooms and opens 80 connections at once; bob's welcome is a fair turn.

    Ordering, not timing: bob's welcome must not wait behind the whole flood of reads.
    """
    mallory = await server.user("mallory")
    bob = await server.user("bob")
    async with server.connect(mallory) as m:
        for i in range(1000):
            await m.send({"type": "join", "room": f"r{i}", "ref": i})
        await m.expect("joined", ref=999, timeout=60)
    arrivals: list[str] = []
    flood = 80
    async with trio.open_nursery() as nursery:
        release = trio.Event()

        async def connect(token: str, who: str) -> None:
            async with server.connect(token, synced=False) as conn:
                assert len(conn.welcome["rooms"]) in (0, 1000)
                arrivals.append(who)
                await release.wait()

        for _ in range(flood):
            nursery.start_soon(connect, mallory, "mallory")
        with trio.fail_after(30):
            while len(arrivals) < 4:
                await trio.sleep(0.005)
        nursery.start_soon(connect, bob, "bob")
        with trio.fail_after(60):
            while len(arrivals) < flood + 1:
                await trio.sleep(0.01)
        release.set()
    before_bob = arrivals.index("bob")
    assert before_bob < flood - 10, f"bob's welcome came after {before_bob} of mallory's {flood}"
