"""PROTOCOL section 5 `history`: every cursor combination, `more`, limits, access rules;
and the HTTP twin `GET /api/rooms/{room}/messages` (same body)."""

from __future__ import annotations

import pytest

from .client import auth, http


@pytest.fixture
def server_overrides():
    return {"rate_per_second": 100000, "rate_burst": 100000}


async def _seed(server, count: int, room: str = "h"):
    """alice posts `count` messages (seq 1..count) to `room`; returns (alice, bob) tokens."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a:
        await a.join(room)
        for i in range(1, count + 1):
            await a.send({"type": "send", "room": room, "id": f"id{i}", "text": f"text {i}"})
        acks = []
        while len(acks) < count:
            acks.append(await a.expect("ack"))
        assert sorted(x["seq"] for x in acks) == list(range(1, count + 1))
    return alice, bob


def _seqs(page):
    return [m["seq"] for m in page["messages"]]


CASES = [
    # params, expected seqs, more
    ({}, list(range(1, 11)), False),
    ({"limit": 3}, [8, 9, 10], True),
    ({"limit": 10}, list(range(1, 11)), False),
    ({"limit": 1}, [10], True),
    ({"before": 5, "limit": 2}, [3, 4], True),
    ({"before": 3, "limit": 2}, [1, 2], False),
    ({"before": 3}, [1, 2], False),
    ({"before": 1}, [], False),
    ({"before": 0}, [], False),
    ({"before": 11}, list(range(1, 11)), False),
    ({"before": 100, "limit": 2}, [9, 10], True),
    ({"after": 5, "limit": 2}, [6, 7], True),
    ({"after": 8, "limit": 2}, [9, 10], False),
    ({"after": 0}, list(range(1, 11)), False),
    ({"after": 0, "limit": 4}, [1, 2, 3, 4], True),
    ({"after": 10}, [], False),
    ({"after": 50}, [], False),
    ({"after": 2, "before": 9, "limit": 3}, [3, 4, 5], True),
    ({"after": 2, "before": 6, "limit": 3}, [3, 4, 5], False),
    ({"after": 2, "before": 7, "limit": 3}, [3, 4, 5], True),
    ({"after": 4, "before": 5}, [], False),
    ({"after": 4, "before": 6}, [5], False),
    ({"after": 0, "before": 11, "limit": 10}, list(range(1, 11)), False),
    ({"after": 0, "before": 11, "limit": 9}, list(range(1, 10)), True),
]


@pytest.mark.parametrize("params, seqs, more", CASES, ids=[repr(c[0]) for c in CASES])
async def test_history_cursor_combinations(server, params, seqs, more):
    alice, bob = await _seed(server, 10)
    async with server.connect(bob) as b:
        page = await b.history("h", **params)
        assert page["type"] == "history" and page["room"] == "h"
        assert _seqs(page) == seqs
        assert page["more"] is more
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/h/messages", params=params, headers=auth(bob))
        assert r.status_code == 200, r.text
        body = r.json()
        assert [m["seq"] for m in body["messages"]] == seqs and body["more"] is more
        assert body["messages"] == page["messages"]
        assert body.get("room", "h") == "h"


async def test_history_reply_shape(server):
    alice, bob = await _seed(server, 2)
    async with server.connect(bob) as b:
        await b.send({"type": "history", "room": "h", "ref": "H"})
        page = await b.recv()
        assert set(page) == {"type", "room", "messages", "more", "ref"}
        assert page["ref"] == "H"
        for i, m in enumerate(page["messages"], start=1):
            assert set(m) == {"type", "room", "seq", "id", "from", "text", "ts"}
            assert m["type"] == "message" and m["room"] == "h" and m["seq"] == i
            assert m["id"] == f"id{i}" and m["from"] == "alice" and m["text"] == f"text {i}"
            assert isinstance(m["ts"], int)


async def test_history_items_equal_live_message_events(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("h")
        await b.join("h")
        await a.send_message("h", "plain")
        await a.send_message("h", "with meta", meta={"a": 1})
        live = await b.messages("h", 2)
        page = await b.history("h")
        assert page["messages"] == live


async def test_history_default_limit_50(server):
    alice, bob = await _seed(server, 60)
    async with server.connect(bob) as b:
        page = await b.history("h")
        assert _seqs(page) == list(range(11, 61)) and page["more"] is True
        page = await b.history("h", after=0)
        assert _seqs(page) == list(range(1, 51)) and page["more"] is True


async def test_history_limit_200_and_paging_back(server):
    alice, bob = await _seed(server, 450)
    async with server.connect(bob) as b:
        seen: list[int] = []
        before = None
        while True:
            params = {"limit": 200}
            if before is not None:
                params["before"] = before
            page = await b.history("h", **params)
            seen = _seqs(page) + seen
            if not page["more"]:
                break
            before = page["messages"][0]["seq"]
        assert seen == list(range(1, 451))


@pytest.mark.parametrize("limit", [0, 201, -1, "5", 5.0, True, None])
async def test_history_limit_out_of_range_bad_request(server, limit):
    alice = await server.user("alice")
    async with server.connect(alice) as a:
        err = await a.history("h", limit=limit)
        assert err["type"] == "error" and err["code"] == "bad_request"


@pytest.mark.parametrize("cursor", [{"before": -1}, {"after": -1}, {"before": "3"}, {"after": 1.5}, {"after": False}])
async def test_history_bad_cursor_bad_request(server, cursor):
    alice = await server.user("alice")
    async with server.connect(alice) as a:
        err = await a.history("h", **cursor)
        assert err["type"] == "error" and err["code"] == "bad_request"


async def test_history_public_room_without_join(server):
    alice, bob = await _seed(server, 3)
    async with server.connect(bob) as b:
        page = await b.history("h")
        assert _seqs(page) == [1, 2, 3]
        assert b.welcome["rooms"] == []


async def test_history_private_room_forbidden(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": "secret", "private": True}, headers=auth(alice))
        assert r.status_code == 201
    async with server.connect(bob) as b:
        err = await b.history("secret")
        assert err["type"] == "error" and err["code"] == "forbidden"


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"before": "-1"},
        {"after": "x"},
        {"limit": "\u00b2"},  # superscript two: str.isdigit() says yes, int() says no
        {"before": "\u00b3"},
    ],
    ids=["limit=0", "limit=201", "limit=abc", "limit=1.5", "before=-1", "after=x", "limit=sup2", "before=sup3"],
)
async def test_http_history_bad_params_400(server, query):
    alice = await server.user("alice")
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/h/messages", params=query, headers=auth(alice))
        assert r.status_code == 400
        assert r.json()["error"] == "bad_request"
