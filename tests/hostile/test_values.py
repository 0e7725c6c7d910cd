"""Values that must not change on the way in: integers beyond +-(2**53-1), long number tokens,
and the room names `.` and `..` (PROTOCOL section 3).

orjson reads an integer beyond 64 bits as a float, so before these rules a `meta` holding 2**64
was acked and stored as 1.8446744073709552e+19. Each case is refused with `bad_request` and
nothing is stored.
"""

from __future__ import annotations

import json

import pytest

from integration.client import auth, http

MAX_INT = 2**53 - 1
CHANGED_ON_THE_WAY = [str(2**64), "1" + "0" * 29, str(MAX_INT + 1), str(-MAX_INT - 1), "0." + "0" * 40 + "1"]


async def _history(server, token: str, room: str) -> list[dict]:
    async with http(server.http_url) as h:
        r = await h.get(f"/api/rooms/{room}/messages", headers=auth(token))
    assert r.status_code == 200, r.text
    return json.loads(r.text)["messages"]


@pytest.mark.parametrize("token_text", CHANGED_ON_THE_WAY)
async def test_ws_send_with_an_unrepresentable_number_in_meta_is_refused(server, token_text: str) -> None:
    token = await server.user("alice")
    async with server.connect(token) as alice:
        await alice.join("numbers")
        frame = '{"type":"send","room":"numbers","id":"m1","text":"hi","ref":"r1","meta":{"n":[%s]}}' % token_text
        await alice.send(frame)
        error = await alice.expect("error", ref="r1")
        assert error["code"] == "bad_request"
        assert (await alice.send_message("numbers", "after"))["type"] == "ack"
    assert [m["text"] for m in await _history(server, token, "numbers")] == ["after"]


async def test_ws_send_with_numbers_in_range_stores_them_exactly(server) -> None:
    token = await server.user("alice")
    async with server.connect(token) as alice:
        await alice.join("numbers")
        frame = '{"type":"send","room":"numbers","id":"m1","text":"hi","ref":"r1","meta":{"a":%d,"b":%d,"c":1.5}}' % (
            MAX_INT, -MAX_INT)
        await alice.send(frame)
        assert (await alice.expect("ack", ref="r1"))["seq"] == 1
    [stored] = await _history(server, token, "numbers")
    assert stored["meta"] == {"a": MAX_INT, "b": -MAX_INT, "c": 1.5}


@pytest.mark.parametrize("token_text", CHANGED_ON_THE_WAY)
async def test_ws_integer_fields_beyond_the_range_are_refused(server, token_text: str) -> None:
    token = await server.user("alice")
    async with server.connect(token) as alice:
        for frame in ('{"type":"join","room":"r","since":%s,"ref":"j"}', '{"type":"history","room":"r","before":%s,"ref":"j"}'):
            await alice.send(frame % token_text)
            assert (await alice.expect("error", ref="j"))["code"] == "bad_request"
        await alice.send('{"type":"ping","ref":%s}' % token_text)
        assert (await alice.expect("error"))["code"] == "bad_request"


@pytest.mark.parametrize("token_text", CHANGED_ON_THE_WAY)
async def test_http_publish_with_an_unrepresentable_number_is_refused(server, token_text: str) -> None:
    token = await server.user("alice")
    body = '{"id":"m1","text":"hi","meta":{"n":%s}}' % token_text
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/numbers/messages", content=body,
                         headers={**auth(token), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text


@pytest.mark.parametrize("name", [".", ".."])
async def test_rooms_named_dot_and_dot_dot_are_refused(server, name: str) -> None:
    token = await server.user("alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": name}, headers=auth(token))
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
    async with server.connect(token) as alice:
        reply = await alice.request({"type": "join", "room": name}, "joined")
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        reply = await alice.request({"type": "send", "room": name, "id": "x", "text": "t"}, "ack")
        assert reply["type"] == "error" and reply["code"] == "bad_request"
