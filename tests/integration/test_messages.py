"""PROTOCOL section 5 `send` and the rules: echo filtering, idempotent send, order, acked =
durable, text and meta limits (section 3)."""

from __future__ import annotations

import json

import pytest

from .client import now_ms


async def _users(server, *names):
    return [await server.user(n) for n in names]


async def test_send_ack_shape(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        before = now_ms()
        await a.send({"type": "send", "room": "general", "id": "m-1", "text": "hello"})
        ack = await a.recv()
        assert set(ack) == {"type", "id", "room", "seq", "ts"}, ack
        assert ack["type"] == "ack" and ack["id"] == "m-1" and ack["room"] == "general" and ack["seq"] == 1
        assert isinstance(ack["ts"], int) and not isinstance(ack["ts"], bool)
        assert abs(ack["ts"] - before) < 60_000


async def test_send_ack_echoes_ref(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send({"type": "send", "room": "general", "id": "m-1", "text": "hello", "ref": "s1"})
        ack = await a.recv()
        assert ack["type"] == "ack" and ack["ref"] == "s1"


async def test_send_others_receive_message(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        ack = await a.send_message("general", "hello bob", id="x1")
        msg = await b.expect("message")
        assert msg == {
            "type": "message",
            "room": "general",
            "seq": ack["seq"],
            "id": "x1",
            "from": "alice",
            "text": "hello bob",
            "ts": ack["ts"],
        }


async def test_send_meta_is_delivered(server):
    alice, bob = await _users(server, "alice", "bob")
    meta = {"reply_to": 3, "tags": ["a", "b"], "nested": {"x": None, "y": 1.5}}
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        ack = await a.send_message("general", "with meta", id="x1", meta=meta)
        msg = await b.expect("message")
        assert msg["meta"] == meta and msg["seq"] == ack["seq"]
        page = await b.history("general")
        assert page["messages"][0]["meta"] == meta


async def test_send_sender_connection_never_gets_its_own_message(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        for i in range(3):
            ack = await a.send_message("general", f"m{i}")
            assert ack["type"] == "ack"
        await b.messages("general", 3)
        await a.assert_silent(0.5, ignore=("presence",))


async def test_send_sender_other_device_receives(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a1, server.connect(alice) as a2:
        await a1.join("general")
        await a2.join("general")
        ack = await a1.send_message("general", "to my other device", id="d1")
        msg = await a2.expect("message")
        assert msg["from"] == "alice" and msg["id"] == "d1" and msg["seq"] == ack["seq"]
        await a1.assert_silent(0.3)


async def test_send_not_delivered_to_connections_not_joined(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a1, server.connect(alice) as a2, server.connect(bob) as b:
        await a1.join("general")
        await a1.send_message("general", "only joined connections")
        await a2.assert_silent(0.3)
        await b.assert_silent(0.1)


async def test_send_idempotent_retry_same_ack_no_second_broadcast(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        first = await a.send_message("general", "once", id="retry-me")
        await b.expect("message", id="retry-me")
        again = await a.send_message("general", "once", id="retry-me")
        assert again["type"] == "ack"
        assert (again["id"], again["room"], again["seq"], again["ts"]) == (
            first["id"], first["room"], first["seq"], first["ts"]
        )
        await b.assert_silent(0.5)
        nxt = await a.send_message("general", "next", id="other")
        assert nxt["seq"] == first["seq"] + 1
        page = await b.history("general")
        assert [m["id"] for m in page["messages"]] == ["retry-me", "other"]


async def test_send_idempotent_retry_after_reconnect(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(bob) as b:
        await b.join("general")
        async with server.connect(alice) as a:
            await a.join("general")
            first = await a.send_message("general", "lost ack?", id="k1")
        await b.expect("message", id="k1")
        async with server.connect(alice) as a2:
            await a2.join("general")
            again = await a2.send_message("general", "lost ack?", id="k1")
            assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
        await b.assert_silent(0.5, ignore=("presence",))


async def test_send_idempotent_retry_pipelined(server):
    """A retry sent before the first ack arrived is still the same message."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        cmd = {"type": "send", "room": "general", "id": "dup", "text": "quick"}
        await a.send(cmd)
        await a.send(cmd)
        ack1 = await a.expect("ack")
        ack2 = await a.expect("ack")
        assert (ack1["seq"], ack1["ts"]) == (ack2["seq"], ack2["ts"])
        await b.expect("message", id="dup")
        await b.assert_silent(0.5)


async def test_send_same_id_other_user_or_room_is_a_new_message(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("r1")
        await a.join("r2")
        await b.join("r1")
        x = await a.send_message("r1", "a in r1", id="same")
        y = await b.send_message("r1", "b in r1", id="same")
        z = await a.send_message("r2", "a in r2", id="same")
        assert (x["seq"], y["seq"], z["seq"]) == (1, 2, 1)


async def test_send_seq_gap_free_from_1(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        seqs = [(await a.send_message("general", f"n{i}"))["seq"] for i in range(10)]
        assert seqs == list(range(1, 11))
        got = await b.messages("general", 10)
        assert [m["seq"] for m in got] == list(range(1, 11))


async def test_send_seq_per_room(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("r1")
        await a.join("r2")
        assert (await a.send_message("r1", "x"))["seq"] == 1
        assert (await a.send_message("r2", "x"))["seq"] == 1
        assert (await a.send_message("r1", "x"))["seq"] == 2


async def test_send_acked_message_is_in_history(server):
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        ack = await a.send_message("general", "durable", id="dur")
        page = await b.history("general")
        assert page["messages"][-1]["seq"] == ack["seq"] and page["messages"][-1]["id"] == "dur"


async def test_send_requires_join_not_joined(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        err = await a.send_message("general", "no join")
        assert err["type"] == "error" and err["code"] == "not_joined"
        assert set(err) == {"type", "ref", "code", "message"} and isinstance(err["message"], str)


async def test_send_text_at_max_chars_accepted(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        ack = await a.send_message("general", "x" * 4000)
        assert ack["type"] == "ack"


async def test_send_text_over_max_chars_too_large(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        err = await a.send_message("general", "x" * 4001)
        assert err["type"] == "error" and err["code"] == "too_large"
        page = await a.history("general")
        assert page["messages"] == []


async def test_send_text_counted_in_code_points(server):
    """4000 astral characters (8000 UTF-16 units, 16000 UTF-8 bytes) are 4000 code points."""
    alice, bob = await _users(server, "alice", "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        text = "\U0001F600" * 4000
        ack = await a.send_message("general", text)
        assert ack["type"] == "ack", ack
        msg = await b.expect("message")
        assert msg["text"] == text
        err = await a.send_message("general", "\U0001F600" * 4001)
        assert err["type"] == "error" and err["code"] == "too_large"
        err = await a.send_message("general", "é" * 4001)
        assert err["type"] == "error" and err["code"] == "too_large"
        ack = await a.send_message("general", "é" * 4000)
        assert ack["type"] == "ack"


def _meta_of_size(n: int, char: str = "x") -> dict:
    # compact '{"k":"<payload>"}' = 8 bytes + payload bytes
    meta = {"k": char * ((n - 8) // len(char.encode()))}
    assert len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()) == n
    return meta


async def test_send_meta_at_1024_bytes_accepted(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        ack = await a.send_message("general", "m", meta=_meta_of_size(1024))
        assert ack["type"] == "ack", ack


async def test_send_meta_measured_compact(server):
    """The client's own whitespace does not count: the compact encoding is measured."""
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        cmd = {"type": "send", "room": "general", "id": "ws", "text": "m", "meta": _meta_of_size(1024), "ref": "w"}
        await a.send(json.dumps(cmd, indent=4))
        ack = await a.recv()
        assert ack["type"] == "ack", ack


async def test_send_meta_over_1024_bytes_too_large(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        err = await a.send_message("general", "m", meta=_meta_of_size(1025))
        assert err["type"] == "error" and err["code"] == "too_large"


async def test_send_meta_counted_in_utf8_bytes(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        # 600 two-byte characters: 608 code points but 1208 bytes
        err = await a.send_message("general", "m", meta={"k": "é" * 600})
        assert err["type"] == "error" and err["code"] == "too_large"
        ack = await a.send_message("general", "m", meta=_meta_of_size(1024, "é"))
        assert ack["type"] == "ack", ack


@pytest.mark.parametrize("meta", [[1, 2], "text", 5, True])
async def test_send_meta_not_object_bad_request(server, meta):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        err = await a.send_message("general", "m", meta=meta)
        assert err["type"] == "error" and err["code"] == "bad_request"


@pytest.mark.parametrize("id_", ["", "x" * 65, 5, None, ["a"]])
async def test_send_id_out_of_range_bad_request(server, id_):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send({"type": "send", "room": "general", "id": id_, "text": "m", "ref": "i"})
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == "bad_request" and err["ref"] == "i"


async def test_send_id_64_chars_accepted(server):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        ack = await a.send_message("general", "m", id="i" * 64)
        assert ack["type"] == "ack" and ack["id"] == "i" * 64


@pytest.mark.parametrize("text", ["", 5, None, ["x"]])
async def test_send_text_out_of_range_bad_request(server, text):
    (alice,) = await _users(server, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send({"type": "send", "room": "general", "id": "t", "text": text, "ref": "t"})
        err = await a.recv()
        assert err["type"] == "error" and err["code"] == "bad_request" and err["ref"] == "t"
