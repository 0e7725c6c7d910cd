"""PROTOCOL sections 3 and 7: malformed frames get `bad_request` and the connection stays open,
`ref` rules, the error event shape, and the error budget (1008)."""

from __future__ import annotations

import json

import pytest


async def _alice(server):
    return await server.user("alice")


async def _still_open(c):
    pong = await c.ping()
    assert pong["type"] == "pong"


MALFORMED = {
    "not json": "hello",
    "truncated json": '{"type":"ping"',
    "json array": "[1,2]",
    "json string": '"ping"',
    "json number": "42",
    "json null": "null",
    "empty object": "{}",
    "type not string": '{"type":5}',
    "type null": '{"type":null}',
    "unknown type": '{"type":"dance"}',
    "type wrong case": '{"type":"PING"}',
    "join missing room": '{"type":"join"}',
    "join room not string": '{"type":"join","room":5}',
    "join room with space": '{"type":"join","room":"bad room"}',
    "join room empty": '{"type":"join","room":""}',
    "join room too long": json.dumps({"type": "join", "room": "r" * 65}),
    "join room slash": '{"type":"join","room":"a/b"}',
    "join dm not ordered": '{"type":"join","room":"dm:bob:alice"}',
    "join dm same user": '{"type":"join","room":"dm:alice:alice"}',
    "join dm malformed": '{"type":"join","room":"dm:alice"}',
    "join dm short usernames": '{"type":"join","room":"dm:ab:cd"}',
    "join dm three parts": '{"type":"join","room":"dm:alice:bob:carol"}',
    "join since string": '{"type":"join","room":"general","since":"3"}',
    "join since float": '{"type":"join","room":"general","since":1.0}',
    "join since negative": '{"type":"join","room":"general","since":-1}',
    "join since bool": '{"type":"join","room":"general","since":true}',
    "leave missing room": '{"type":"leave"}',
    "send missing text": '{"type":"send","room":"general","id":"1"}',
    "send missing id": '{"type":"send","room":"general","text":"x"}',
    "send missing room": '{"type":"send","id":"1","text":"x"}',
    "send empty text": '{"type":"send","room":"general","id":"1","text":""}',
    "dm missing to": '{"type":"dm","id":"1","text":"x"}',
    "history missing room": '{"type":"history"}',
    "typing missing room": '{"type":"typing"}',
    "read missing seq": '{"type":"read","room":"general"}',
    "presence missing room": '{"type":"presence"}',
    "type welcome": '{"type":"welcome"}',
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_frame_bad_request_connection_stays_open(server, frame):
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.join("general")
        await c.send(frame)
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "bad_request", err
        assert isinstance(err["message"], str)
        await _still_open(c)


async def test_error_event_shape(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.send('{"type":"dance"}')
        err = await c.recv()
        assert set(err) == {"type", "code", "message"}, err
        await c.send('{"type":"dance","ref":"d"}')
        err = await c.recv()
        assert set(err) == {"type", "code", "message", "ref"} and err["ref"] == "d"


async def test_binary_frame_bad_request_connection_stays_open(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.ws.send_message(b'{"type":"ping"}')
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "bad_request"
        await _still_open(c)


@pytest.mark.parametrize(
    "ref_json",
    ["1.0", "true", "false", json.dumps("x" * 65), "{}", "[]", "1.5", "1e3", "null"],
    ids=["float-1.0", "true", "false", "65-chars", "object", "array", "1.5", "1e3", "null"],
)
async def test_bad_ref_bad_request(server, ref_json):
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.send('{"type":"ping","ref":%s}' % ref_json)
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "bad_request", err
        await _still_open(c)


@pytest.mark.parametrize("ref", ["x" * 64, "", 0, 123456789, -5, 2**53 - 1, -(2**53 - 1), "ünïcode"])
async def test_good_ref_echoed_on_reply(server, ref):
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.send({"type": "ping", "ref": ref})
        pong = await c.recv()
        assert pong["type"] == "pong" and pong["ref"] == ref


async def test_ref_echoed_on_every_reply(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        replies = {}
        for cmd, reply in [
            ({"type": "join", "room": "general", "ref": "j"}, "joined"),
            ({"type": "send", "room": "general", "id": "1", "text": "x", "ref": 2}, "ack"),
            ({"type": "history", "room": "general", "ref": "h"}, "history"),
            ({"type": "presence", "room": "general", "ref": "p"}, "presence_list"),
            ({"type": "ping", "ref": 5}, "pong"),
            ({"type": "leave", "room": "general", "ref": "l"}, "left"),
        ]:
            await c.send(cmd)
            ev = await c.expect(reply)
            replies[reply] = ev
            assert ev["ref"] == cmd["ref"], ev


async def test_ref_echoed_on_errors(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        cases = [
            ({"type": "send", "room": "general", "id": "1", "text": "x", "ref": "nj"}, "not_joined"),
            ({"type": "dm", "to": "nobody", "id": "1", "text": "x", "ref": 77}, "not_found"),
            ({"type": "join", "room": "bad room", "ref": "br"}, "bad_request"),
            ({"type": "dance", "ref": "dance"}, "bad_request"),
            ({"type": "join", "room": "general", "since": "x", "ref": 3}, "bad_request"),
        ]
        await c.join("big")
        cases.append(({"type": "send", "room": "big", "id": "2", "text": "x" * 4001, "ref": "tl"}, "too_large"))
        for cmd, code in cases:
            await c.send(cmd)
            err = await c.recv()
            assert err["type"] == "error" and err["code"] == code and err["ref"] == cmd["ref"], (cmd, err)


async def test_not_json_object_ref_not_available(server):
    """No ref can be echoed when the frame is not JSON; the error still comes."""
    token = await _alice(server)
    async with server.connect(token) as c:
        await c.send('{"ref":"x", oops}')
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "bad_request"


# --------------------------------------------------------------------------- error budget


async def test_error_budget_more_than_100_errors_close_1008(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        for _ in range(100):
            await c.send('{"type":"dance"}')
        for _ in range(100):
            err = await c.recv()
            assert err["type"] == "error" and err["code"] == "bad_request"
        await _still_open(c)  # exactly 100 errors: still fine
        await c.send('{"type":"dance"}')
        assert await c.expect_close() == 1008


@pytest.mark.parametrize("server_overrides", [{"rate_per_second": 100000, "rate_burst": 100000}])
async def test_error_budget_counts_every_code(server):
    token = await _alice(server)
    async with server.connect(token) as c:
        for i in range(101):
            kind = i % 3
            if kind == 0:
                await c.send({"type": "send", "room": "general", "id": str(i), "text": "x"})  # not_joined
            elif kind == 1:
                await c.send({"type": "dm", "to": "nobody", "id": str(i), "text": "x"})  # not_found
            else:
                await c.send("garbage")  # bad_request
        assert await c.expect_close() == 1008
        codes = {e["code"] for e in c.buffer if e["type"] == "error"}
        assert codes <= {"not_joined", "not_found", "bad_request"}


class TestErrorBudgetIgnoresRateLimited:
    @pytest.fixture
    def server_overrides(self):
        return {"rate_per_second": 1, "rate_burst": 1}

    async def test_error_budget_rate_limited_do_not_count(self, server):
        token = await _alice(server)
        async with server.connect(token) as c:
            await c.join("general")
            for i in range(150):
                await c.send({"type": "send", "room": "general", "id": f"m{i}", "text": "x"})
            limited = 0
            acked = 0
            while limited + acked < 150:
                ev = await c.recv()
                if ev["type"] == "ack":
                    acked += 1
                else:
                    assert ev["type"] == "error" and ev["code"] == "rate_limited", ev
                    limited += 1
            assert limited > 100
            await _still_open(c)
            # and 100 ordinary errors on top are still within budget
            for _ in range(100):
                await c.send("garbage")
            for _ in range(100):
                assert (await c.recv())["code"] == "bad_request"
            await _still_open(c)
