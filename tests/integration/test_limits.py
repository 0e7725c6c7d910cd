"""PROTOCOL sections 3, 5 "Backpressure" and 7: rate limiting (`rate_limited`, 4029), frame
size (1009), invalid UTF-8 (1007), idle (4000), slow consumer (4008) and paced replays."""

from __future__ import annotations

import json

import pytest
import trio

from .client import OP_CONT, OP_TEXT, ConnectionClosed, build_frame, raw_connect
from .deployments import metrics_total


async def _users(server, *names):
    return [await server.user(n) for n in names]


# --------------------------------------------------------------------------- rate limit


class TestRateLimit:
    @pytest.fixture
    def server_overrides(self):
        return {"rate_per_second": 1, "rate_burst": 3}

    async def test_rate_limited_burst_then_limited_nothing_stored(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a, server.connect(bob) as b:
            await a.join("general")
            await b.join("general")
            for i in range(6):
                await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": "x", "ref": i})
            replies = {}
            while len(replies) < 6:
                ev = await a.recv()
                if ev["type"] in ("ack", "error"):
                    replies[ev["ref"]] = ev
            assert [replies[i]["type"] for i in range(3)] == ["ack"] * 3
            limited = [i for i in range(3, 6) if replies[i]["type"] == "error"]
            for i in limited:
                assert replies[i]["code"] == "rate_limited"
            assert len(limited) >= 2
            acked_ids = {f"m{i}" for i in range(6) if replies[i]["type"] == "ack"}
            page = await b.history("general")
            assert {m["id"] for m in page["messages"]} == acked_ids
            assert [m["seq"] for m in page["messages"]] == list(range(1, len(acked_ids) + 1))

    async def test_rate_limited_send_can_be_retried_later(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.join("general")
            for i in range(3):
                assert (await a.send_message("general", "x", id=f"ok{i}"))["type"] == "ack"
            err = await a.send_message("general", "x", id="later")
            assert err["type"] == "error" and err["code"] == "rate_limited"
            await trio.sleep(1.5)
            ack = await a.send_message("general", "x", id="later")
            assert ack["type"] == "ack" and ack["seq"] == 4

    async def test_rate_limit_shared_by_send_dm_typing(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a:
            await a.join("general")
            await a.send({"type": "typing", "room": "general"})
            assert (await a.dm("bob", "one"))["type"] == "ack"
            assert (await a.send_message("general", "two"))["type"] == "ack"
            err = await a.dm("bob", "three")
            assert err["type"] == "error" and err["code"] == "rate_limited"
            err = await a.send_message("general", "four")
            assert err["type"] == "error" and err["code"] == "rate_limited"

    async def test_rate_limited_typing_not_relayed(self, server):
        alice, bob = await _users(server, "alice", "bob")
        async with server.connect(alice) as a, server.connect(bob) as b:
            await a.join("general")
            await b.join("general")
            for i in range(3):
                assert (await a.send_message("general", "x"))["type"] == "ack"
            await b.messages("general", 3)
            await a.send({"type": "typing", "room": "general", "ref": "t"})
            err = await a.expect("error")
            assert err["type"] == "error" and err["code"] == "rate_limited" and err["ref"] == "t"
            await b.assert_silent(0.3)

    async def test_rate_limit_does_not_apply_to_other_commands(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.join("general")
            for i in range(3):
                await a.send_message("general", "x")
            for _ in range(10):
                await a.ping()
                assert (await a.presence("general"))["type"] == "presence_list"
            # history is in the bucket (PROTOCOL section 7): a store read per page
            assert (await a.history("general"))["code"] == "rate_limited"

    async def test_rate_limit_is_per_connection(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a1, server.connect(alice) as a2:
            await a1.join("general")
            await a2.join("general")
            for i in range(3):
                assert (await a1.send_message("general", "x"))["type"] == "ack"
            assert (await a1.send_message("general", "x"))["code"] == "rate_limited"
            assert (await a2.send_message("general", "y"))["type"] == "ack"


class TestRateLimitClose:
    @pytest.fixture
    def server_overrides(self):
        return {"rate_per_second": 1, "rate_burst": 1}

    async def test_rate_limited_more_than_10s_in_a_row_closes_4029(self, server):
        """~20 sends a second against 1 token a second: every second sees `rate_limited`, the
        one let through each second does not reset the streak, and the 1008 error budget
        is not what closes it (rate_limited errors do not count)."""
        (alice,) = await _users(server, "alice")
        seen = {"first_limited": None, "acks": 0, "limited": 0}
        async with server.connect(alice) as a:
            await a.join("general")

            async def reader():
                while True:
                    try:
                        ev = await a.recv(timeout=30)
                    except ConnectionClosed:
                        return
                    if ev["type"] == "ack":
                        seen["acks"] += 1
                    elif ev["type"] == "error" and ev["code"] == "rate_limited":
                        seen["limited"] += 1
                        if seen["first_limited"] is None:
                            seen["first_limited"] = trio.current_time()

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    i = 0
                    while a.close_code is None:
                        try:
                            await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": "x"})
                        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                        i += 1
                        await trio.sleep(0.05)
            closed_at = trio.current_time()
            code = a.close_code if a.close_code is not None else await a.expect_close()
        assert code == 4029
        assert seen["first_limited"] is not None
        # "more than 10 s": the close cannot come before 10 s of continuous limiting
        assert closed_at - seen["first_limited"] >= 9.5
        assert seen["acks"] >= 2 and seen["limited"] > 100


    async def test_rate_limiting_with_a_quiet_second_does_not_close(self, server):
        """Limited for ~6 s, one second without any `rate_limited` answer, ~6 s more: no
        streak of more than 10 s, so no 4029."""
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.join("general")
            i = 0

            async def burst(seconds: float) -> None:
                nonlocal i
                end = trio.current_time() + seconds
                while trio.current_time() < end:
                    await a.send({"type": "send", "room": "general", "id": f"q{i}", "text": "x"})
                    i += 1
                    await trio.sleep(0.05)

            await burst(6)
            await trio.sleep(1.6)  # nothing sent: a whole second without rate_limited
            await burst(6)
            await trio.sleep(0.3)
            await a.ping()  # still open
            assert a.close_code is None


# --------------------------------------------------------------------------- frame size


class TestFrameSize:
    @pytest.fixture
    def server_overrides(self):
        return {"max_frame_bytes": 1024}

    @staticmethod
    def _ping_of(size: int) -> str:
        base = '{"type":"ping","pad":""}'
        frame = base[:-2] + "x" * (size - len(base)) + '"}'
        assert len(frame.encode()) == size
        return frame

    async def test_frame_at_max_frame_bytes_accepted(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            assert a.welcome["limits"]["max_frame_bytes"] == 1024
            await a.send(self._ping_of(1024))
            assert (await a.recv())["type"] == "pong"

    async def test_frame_over_max_frame_bytes_closes_1009(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.send(self._ping_of(1025))
            assert await a.expect_close() == 1009

    async def test_large_frame_closes_1009(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.join("general")
            await a.send({"type": "send", "room": "general", "id": "big", "text": "y" * 5000})
            assert await a.expect_close() == 1009

    async def test_frame_size_counts_utf8_bytes(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            # 600 two-byte characters: under 1024 characters, over 1024 bytes
            await a.send('{"type":"ping","pad":"%s"}' % ("é" * 600))
            assert await a.expect_close() == 1009

    async def test_binary_frame_over_max_closes_1009(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            await a.ws.send_message(b"z" * 2000)
            assert await a.expect_close() == 1009

    async def test_fragmented_message_summed_closes_1009(self, server):
        (alice,) = await _users(server, "alice")
        async with raw_connect(server.ws_url, alice) as r:
            assert (await r.recv_json())["type"] == "welcome"
            assert (await r.recv_json())["type"] == "synced"
            frame = self._ping_of(1200).encode()
            await r.send_raw(build_frame(OP_TEXT, frame[:600], fin=False))
            await r.send_raw(build_frame(OP_CONT, frame[600:], fin=True))
            code, _ = await r.wait_close()
            assert code == 1009

    async def test_fragmented_message_within_limit_accepted(self, server):
        (alice,) = await _users(server, "alice")
        async with raw_connect(server.ws_url, alice) as r:
            assert (await r.recv_json())["type"] == "welcome"
            assert (await r.recv_json())["type"] == "synced"
            frame = self._ping_of(1000).encode()
            await r.send_raw(build_frame(OP_TEXT, frame[:500], fin=False))
            await r.send_raw(build_frame(OP_CONT, frame[500:], fin=True))
            assert (await r.recv_json())["type"] == "pong"


# --------------------------------------------------------------------------- UTF-8


async def test_invalid_utf8_text_frame_closes_1007(server):
    (alice,) = await _users(server, "alice")
    async with raw_connect(server.ws_url, alice) as r:
        assert (await r.recv_json())["type"] == "welcome"
        assert (await r.recv_json())["type"] == "synced"
        await r.send_raw(build_frame(OP_TEXT, b'{"type":"ping","x":"\xff\xfe"}'))
        code, _ = await r.wait_close()
        assert code == 1007


async def test_invalid_utf8_split_across_fragments_closes_1007(server):
    (alice,) = await _users(server, "alice")
    async with raw_connect(server.ws_url, alice) as r:
        assert (await r.recv_json())["type"] == "welcome"
        assert (await r.recv_json())["type"] == "synced"
        # 0xC3 starts a two-byte sequence; the continuation frame does not finish it
        await r.send_raw(build_frame(OP_TEXT, b'{"type":"ping","x":"\xc3', fin=False))
        await r.send_raw(build_frame(OP_CONT, b'("}', fin=True))
        code, _ = await r.wait_close()
        assert code == 1007


async def test_valid_utf8_split_across_fragments_accepted(server):
    (alice,) = await _users(server, "alice")
    async with raw_connect(server.ws_url, alice) as r:
        assert (await r.recv_json())["type"] == "welcome"
        assert (await r.recv_json())["type"] == "synced"
        data = '{"type":"ping","x":"é"}'.encode()
        cut = data.index(b"\xc3") + 1
        await r.send_raw(build_frame(OP_TEXT, data[:cut], fin=False))
        await r.send_raw(build_frame(OP_CONT, data[cut:], fin=True))
        assert (await r.recv_json())["type"] == "pong"


# --------------------------------------------------------------------------- idle


class TestIdle:
    @pytest.fixture
    def server_overrides(self):
        return {"heartbeat_s": 0.3}

    async def test_idle_client_not_answering_pings_closed_4000(self, server):
        (alice,) = await _users(server, "alice")
        async with raw_connect(server.ws_url, alice, auto_pong=False) as r:
            welcome = await r.recv_json()
            assert welcome["type"] == "welcome" and welcome["heartbeat"] == 0.3
            code, _ = await r.wait_close()
            assert code == 4000
            assert r.pings >= 1  # the server pinged before giving up

    async def test_server_pings_every_heartbeat(self, server):
        (alice,) = await _users(server, "alice")
        async with raw_connect(server.ws_url, alice, auto_pong=True) as r:
            await r.wait_pings(3)
            assert r.pings >= 3 and r.close_code is None

    async def test_client_answering_pings_stays_connected(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:  # trio-websocket answers pings
            await trio.sleep(2.0)
            await a.ping()

    async def test_websocket_ping_from_client_answered(self, server):
        (alice,) = await _users(server, "alice")
        async with server.connect(alice) as a:
            with trio.fail_after(10):
                await a.ws.ping(b"are-you-there")

    async def test_client_sending_frames_stays_connected_without_pongs(self, server):
        (alice,) = await _users(server, "alice")
        async with raw_connect(server.ws_url, alice, auto_pong=False) as r:
            for _ in range(15):
                await r.send_json({"type": "ping"})
                await r.expect("pong")
                await trio.sleep(0.1)
            assert r.close_code is None
            await r.send_json({"type": "ping"})
            assert (await r.expect("pong"))["type"] == "pong"


# --------------------------------------------------------------------------- slow consumer


# Loopback kernel buffers are large (the server's send buffer autotunes to ~4 MB even for a
# peer that reads nothing), so "slow" needs several MB in flight: big messages keep the count low.
BIG_TEXT = "s" * 50_000


class TestSlowConsumer:
    @pytest.fixture
    def server_overrides(self):
        return {
            "send_queue_bytes": 512 * 1024,
            "max_text_chars": 60_000,
            "rate_per_second": 100000,
            "rate_burst": 100000,
        }

    async def test_slow_consumer_closed_4008_room_keeps_serving_others(self, server):
        alice, bob, carol = await _users(server, "alice", "bob", "carol")
        total, chunk = 160, 5  # ~8 MB: far beyond kernel buffers + a 512 KiB backlog;
        # chunks of 250 KB keep the burst well under the backlog limit for a reader that reads
        async with server.connect(alice) as a, server.connect(carol) as c:
            await a.join("general")
            await c.join("general")
            async with raw_connect(server.ws_url, bob, rcvbuf=4096) as slow:
                assert (await slow.recv_json())["type"] == "welcome"
                assert (await slow.recv_json())["type"] == "synced"
                await slow.send_json({"type": "join", "room": "general"})
                assert (await slow.expect("joined"))["type"] == "joined"
                # bob stops reading entirely from here on

                received: list[int] = []

                async def read_all():
                    while len(received) < total:
                        ev = await c.expect("message", room="general", timeout=30)
                        received.append(ev["seq"])

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all)
                    for start in range(0, total, chunk):
                        for i in range(start, start + chunk):
                            await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": BIG_TEXT})
                        for _ in range(chunk):
                            await a.expect("ack", timeout=30)
                assert received == list(range(1, total + 1))
                # the room still serves: one more message reaches carol
                await a.send_message("general", "still alive")
                assert (await c.expect("message", room="general"))["seq"] == total + 1
                # bob was evicted: after what the kernel held comes the close (or a drop)
                code, got = await slow.wait_close(timeout=30)
                assert code in (4008, 1006), code
                seqs = [json.loads(m)["seq"] for m in got if isinstance(m, str) and '"message"' in m]
                assert seqs == list(range(1, len(seqs) + 1))  # what did arrive is in order, no gaps
                assert len(seqs) < total
            # bob resumes losslessly with `join since`
            last = seqs[-1] if seqs else 0
            async with server.connect(bob, max_message_size=1 << 26) as b:
                await b.send({"type": "join", "room": "general", "since": last})
                resumed = []
                while True:
                    ev = await b.recv(timeout=30)
                    if ev["type"] == "joined":
                        break
                    if ev["type"] == "message":
                        resumed.append(ev["seq"])
                assert resumed == list(range(last + 1, total + 2))
                assert ev["recovered"] is True

    async def test_slow_consumer_eviction_counted_in_metrics(self, server):
        alice, bob = await _users(server, "alice", "bob")
        before = await self._evictions(server)
        async with server.connect(alice) as a:
            await a.join("general")
            async with raw_connect(server.ws_url, bob, rcvbuf=4096) as slow:
                assert (await slow.recv_json())["type"] == "welcome"
                assert (await slow.recv_json())["type"] == "synced"
                await slow.send_json({"type": "join", "room": "general"})
                await slow.expect("joined")
                for i in range(160):
                    await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": BIG_TEXT})
                    await a.expect("ack", timeout=30)
                code, _ = await slow.wait_close(timeout=30)
                assert code in (4008, 1006)
        assert await self._evictions(server) >= before + 1

    async def _evictions(self, server) -> float:
        """Evictions counted by the server (on a cluster: by its nodes together)."""
        values = await metrics_total(server)
        return sum(v for k, v in values.items() if k.startswith("chat_evictions_total"))

    async def test_join_since_replay_to_slow_reader_is_paced_not_evicted(self, server):
        alice, bob = await _users(server, "alice", "bob")
        total = 160  # ~8 MB replay through a 512 KiB backlog (and ~4 MB of kernel buffers)
        async with server.connect(alice) as a:
            await a.join("general")
            for i in range(total):
                await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": BIG_TEXT})
            for _ in range(total):
                await a.expect("ack", timeout=30)
        async with raw_connect(server.ws_url, bob, rcvbuf=4096) as slow:
            assert (await slow.recv_json())["type"] == "welcome"
            assert (await slow.recv_json())["type"] == "synced"
            await slow.send_json({"type": "join", "room": "general", "since": 0})
            seqs = []
            with trio.fail_after(60):
                while True:
                    ev = await slow.recv_json(timeout=30)
                    if ev["type"] == "joined":
                        break
                    assert ev["type"] == "message", ev
                    seqs.append(ev["seq"])
                    if len(seqs) % 10 == 0:
                        await trio.sleep(0.05)  # a slow but steady reader
            assert seqs == list(range(1, total + 1))
            assert ev["recovered"] is True
            await slow.send_json({"type": "ping"})
            assert (await slow.expect("pong"))["type"] == "pong"
            assert slow.close_code is None

    async def test_history_pages_to_slow_reader_not_evicted(self, server):
        alice, bob = await _users(server, "alice", "bob")
        total = 100
        async with server.connect(alice) as a:
            await a.join("general")
            for i in range(total):
                await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": BIG_TEXT})
            for _ in range(total):
                await a.expect("ack", timeout=30)
        async with raw_connect(server.ws_url, bob, rcvbuf=4096) as slow:
            assert (await slow.recv_json())["type"] == "welcome"
            assert (await slow.recv_json())["type"] == "synced"
            # three ~5 MB pages (each far bigger than the 512 KiB backlog), read slowly
            for _ in range(3):
                await slow.send_json({"type": "history", "room": "general", "limit": 100})
            for _ in range(3):
                page = await slow.recv_json(timeout=30)
                assert page["type"] == "history" and len(page["messages"]) == 100
                await trio.sleep(0.2)
            await slow.send_json({"type": "ping"})
            assert (await slow.expect("pong"))["type"] == "pong"
            assert slow.close_code is None
