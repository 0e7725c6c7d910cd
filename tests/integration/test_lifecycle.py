"""PROTOCOL sections 1, 4, 5 (`ping`, "Acked = durable") and 7 (1001): startup line, welcome,
synced, ping, graceful shutdown, durability across a restart and across a SIGKILL."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from contextlib import AsyncExitStack

import pytest
import trio

import chat_actors

from .client import connect, now_ms, register


@pytest.mark.single_node("the line each process logs about its own listeners")
async def test_listening_log_line(server_factory, caplog):
    caplog.set_level(logging.INFO)
    srv = await server_factory()
    lines = [r.getMessage() for r in caplog.records if "chat-actors listening" in r.getMessage()]
    assert len(lines) == 1, lines
    m = re.search(r"chat-actors listening ws=(\S+) http=(\S+)", lines[0])
    assert m, lines[0]
    assert m.group(1) == srv.ws_url
    assert m.group(2).rstrip("/") == srv.http_url.rstrip("/")
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/ws", m.group(1))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", m.group(2).rstrip("/"))
    assert not m.group(1).endswith(":0/ws")


async def test_welcome_shape(server):
    token = await server.user("alice")
    async with server.connect(token, synced=False) as c:
        w = c.welcome
        assert set(w) == {"type", "user", "session", "server", "heartbeat", "limits", "rooms", "node"}, w
        assert isinstance(w["node"], str) and w["node"]      # CHAT_NODE_ID, or host name + pid
        assert w["user"] == "alice"
        assert isinstance(w["session"], str) and w["session"]
        assert w["server"] == f"chat-actors/{chat_actors.__version__}"
        assert w["heartbeat"] == 30
        assert w["limits"] == {
            "max_frame_bytes": 65536,
            "max_text_chars": 4000,
            "rate_per_second": 20,
            "rate_burst": 40,
        }
        assert w["rooms"] == []


async def test_synced_right_after_welcome(server):
    token = await server.user("alice")
    async with server.connect(token, synced=False) as c:
        assert await c.recv() == {"type": "synced"}
        await c.assert_silent(0.2)


async def test_welcome_session_differs_per_connection(server):
    token = await server.user("alice")
    async with server.connect(token) as a, server.connect(token) as b:
        assert a.welcome["session"] != b.welcome["session"]


class TestWelcomeLimitsFollowConfig:
    @pytest.fixture
    def server_overrides(self):
        return {
            "heartbeat_s": 12,
            "max_frame_bytes": 20000,
            "max_text_chars": 100,
            "rate_per_second": 5,
            "rate_burst": 7,
        }

    async def test_welcome_limits_follow_config(self, server):
        token = await server.user("alice")
        async with server.connect(token) as c:
            assert c.welcome["heartbeat"] == 12
            assert c.welcome["limits"] == {
                "max_frame_bytes": 20000,
                "max_text_chars": 100,
                "rate_per_second": 5,
                "rate_burst": 7,
            }


async def test_welcome_rooms_with_seq_and_read(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await a.join("quiet")
        await b.join("general")
        await b.join("gone")
        await b.leave("gone")
        for i in range(3):
            ack = await a.send_message("general", f"hello {i}")
            assert ack["type"] == "ack"
        await b.messages("general", 3)
        await b.send({"type": "read", "room": "general", "seq": 2})
        await a.expect("read", room="general", user="bob", seq=2)
        ack = await a.dm("bob", "psst")
        assert ack["room"] == "dm:alice:bob"
    async with server.connect(bob) as b2:
        rooms = sorted(b2.welcome["rooms"], key=lambda r: r["room"])
        assert rooms == [
            {"room": "dm:alice:bob", "seq": 1, "read": 0},
            {"room": "general", "seq": 3, "read": 2},
        ]
    async with server.connect(alice) as a2:
        rooms = sorted(a2.welcome["rooms"], key=lambda r: r["room"])
        assert rooms == [
            {"room": "dm:alice:bob", "seq": 1, "read": 1},
            {"room": "general", "seq": 3, "read": 3},
            {"room": "quiet", "seq": 0, "read": 0},
        ]


async def test_ping_pong(server):
    token = await server.user("alice")
    async with server.connect(token) as c:
        before = now_ms()
        await c.send({"type": "ping"})
        pong = await c.recv()
        assert set(pong) == {"type", "ts"}
        assert pong["type"] == "pong"
        assert isinstance(pong["ts"], int) and not isinstance(pong["ts"], bool)
        assert abs(pong["ts"] - before) < 60_000


@pytest.mark.parametrize("ref", ["abc", 7, 0, -3, "x" * 64])
async def test_ping_pong_echoes_ref(server, ref):
    token = await server.user("alice")
    async with server.connect(token) as c:
        await c.send({"type": "ping", "ref": ref})
        pong = await c.recv()
        assert pong["type"] == "pong" and pong["ref"] == ref
        assert set(pong) == {"type", "ts", "ref"}


async def test_unknown_fields_ignored(server):
    token = await server.user("alice")
    async with server.connect(token) as c:
        await c.send({"type": "ping", "extra": {"nested": [1, 2]}, "ref": "u"})
        assert (await c.recv())["type"] == "pong"
        joined = await c.request({"type": "join", "room": "general", "colour": "blue"}, "joined")
        assert joined["type"] == "joined"


async def test_shutdown_closes_every_client_1001(server):
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(server.connect(alice)),
            await stack.enter_async_context(server.connect(alice)),
            await stack.enter_async_context(server.connect(bob)),
        ]
        await conns[0].join("general")
        await conns[2].join("general")
        server.request_shutdown()
        for c in conns:
            assert await c.expect_close(timeout=15) == 1001
        await server.wait_stopped()


async def test_shutdown_flushes_acked_messages_before_1001(server):
    """Durable events are never dropped: what was acked reaches the other members before
    their 1001."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        for i in range(30):  # within the default burst of 40
            await a.send({"type": "send", "room": "general", "id": f"m{i}", "text": "x" * 1000})
        for _ in range(30):
            await a.expect("ack")
        server.request_shutdown()
        assert await b.expect_close(timeout=15) == 1001
        seqs = [e["seq"] for e in b.buffer if e["type"] == "message"]
        assert seqs == list(range(1, 31))
        assert await a.expect_close(timeout=15) == 1001
        await server.wait_stopped()


async def test_shutdown_closes_unauthenticated_connection_1001(server):
    """A connection still waiting for its first-frame `auth` is a client too."""
    await server.user("alice")
    async with server.connect(None, auth="none", welcome=False) as c:
        await c.ws.ping(b"x")  # the upgrade is done and the server is reading
        server.request_shutdown()
        assert await c.expect_close(timeout=15) == 1001
    await server.wait_stopped()


async def test_acked_messages_survive_restart(server, server_factory):
    alice = await server.user("alice")
    async with server.connect(alice) as a:
        await a.join("general")
        acks = [await a.send_message("general", f"m{i}", id=f"id{i}") for i in range(3)]
        assert [x["seq"] for x in acks] == [1, 2, 3]
    await server.stop()
    srv2 = await server_factory()
    async with srv2.connect(alice) as a:
        assert {"room": "general", "seq": 3, "read": 3} in a.welcome["rooms"]
        page = await a.history("general")
        assert [(m["seq"], m["id"], m["ts"]) for m in page["messages"]] == [
            (x["seq"], x["id"], x["ts"]) for x in acks
        ]
        await a.join("general")
        retry = await a.send_message("general", "m0", id="id0")
        assert (retry["seq"], retry["ts"]) == (acks[0]["seq"], acks[0]["ts"])
        nxt = await a.send_message("general", "after restart")
        assert nxt["seq"] == 4


# --------------------------------------------------------------------------- a real process, killed

PROCESS_SECRET = "process-secret-" + "0123456789abcdef" * 4


async def _start_process(nursery, tmp_path, log_lines: list[str]):
    """`python -m chat_actors serve` on port 0; returns (process, ws_url, http_url) once the
    listening line is logged. Its output keeps being drained into `log_lines`."""
    env = {
        **os.environ,
        "CHAT_WS_PORT": "0",
        "CHAT_HTTP_PORT": "0",
        "CHAT_STORE": f"sqlite:///{tmp_path}/chat.db",
        "CHAT_DATA_DIR": str(tmp_path),
        "CHAT_JWT_SECRET": PROCESS_SECRET,
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chat_actors", "serve"],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    found = trio.Event()
    urls: dict[str, str] = {}

    async def drain() -> None:
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                log_lines.append(line)
                m = re.search(r"chat-actors listening ws=(\S+) http=(\S+)", line)
                if m and not found.is_set():
                    urls["ws"], urls["http"] = m.group(1), m.group(2).rstrip("/")
                    found.set()

    nursery.start_soon(drain)
    try:
        with trio.fail_after(30):
            await found.wait()
    except BaseException:
        proc.kill()
        raise
    return proc, urls["ws"], urls["http"]


async def _stop(proc, *, kill: bool) -> int:
    if proc.returncode is None:
        proc.kill() if kill else proc.terminate()
    with trio.fail_after(30):
        return await proc.wait()


async def test_acked_messages_survive_kill_9(tmp_path):
    """Acked = durable: a SIGKILL right after the acks loses none of them; SIGTERM is a
    graceful stop with exit code 0."""
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        proc, ws_url, http_url = await _start_process(nursery, tmp_path, lines)
        try:
            assert sum("chat-actors listening" in line for line in lines) == 1
            alice = await register(http_url, "alice")
            async with connect(ws_url, alice) as a:
                await a.join("general")
                for i in range(30):
                    await a.send({"type": "send", "room": "general", "id": f"k{i}", "text": f"t{i}"})
                acks = [await a.expect("ack") for _ in range(30)]
                await _stop(proc, kill=True)  # SIGKILL: nothing graceful happens
        finally:
            await _stop(proc, kill=True)
        proc2, ws_url, http_url = await _start_process(nursery, tmp_path, lines)
        try:
            async with connect(ws_url, alice) as a:
                page = await a.history("general")
                stored = {(m["seq"], m["id"], m["ts"]) for m in page["messages"]}
                assert {(x["seq"], x["id"], x["ts"]) for x in acks} <= stored
                await a.join("general")
                retry = await a.send_message("general", "t0", id="k0")
                assert (retry["seq"], retry["ts"]) == (acks[0]["seq"], acks[0]["ts"])
        finally:
            code = await _stop(proc2, kill=False)
        assert code == 0, "\n".join(lines[-20:])
        nursery.cancel_scope.cancel()
