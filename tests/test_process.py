"""The real server process: `kill -9` mid-stream loses no acked message; SIGTERM closes 1001, exits 0.

These run `python -m chat_actors serve` as a subprocess on an SQLite file, talk to it over real
sockets, and restart it on the same file to see what was durable.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

LISTENING = re.compile(r"chat-actors listening ws=(ws://\S+) http=(http://\S+)")
SECRET = "process-test-secret-0123456789abcdef"


class ServerProcess:
    """One server subprocess whose log goes to a file we poll for the listening line."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"server-{os.urandom(3).hex()}.log"
        self.proc: trio.Process | None = None
        self.ws_url = self.http_url = ""

    async def start(self) -> None:
        log = open(self.log_path, "wb")
        cmd = [
            sys.executable, "-m", "chat_actors", "serve", "--ws-port", "0", "--http-port", "0",
            "--store", f"sqlite:///{self.workdir}/chat.db", "--data-dir", str(self.workdir),
            "--jwt-secret", SECRET, "--rate-per-second", "100000", "--rate-burst", "100000",
            "--graceful-timeout", "5",
        ]
        self.proc = await trio.lowlevel.open_process(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        with trio.fail_after(30):
            while True:
                match = LISTENING.search(self.log_path.read_text(errors="replace"))
                if match:
                    self.ws_url, self.http_url = match.group(1), match.group(2)
                    return
                assert self.proc.poll() is None, self.log_path.read_text()
                await trio.sleep(0.05)

    async def wait(self) -> int:
        assert self.proc is not None
        with trio.fail_after(30):
            return await self.proc.wait()


async def _token(http_url: str, user: str) -> str:
    async with httpx.AsyncClient(base_url=http_url) as client:
        r = await client.post("/api/register", json={"username": user, "password": "password-123"})
        if r.status_code == 409:
            r = await client.post("/api/login", json={"username": user, "password": "password-123"})
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]


async def _all_messages(http_url: str, token: str, room: str) -> list[dict]:
    messages: list[dict] = []
    async with httpx.AsyncClient(base_url=http_url, headers={"Authorization": f"Bearer {token}"}) as client:
        after = 0
        while True:
            r = await client.get(f"/api/rooms/{room}/messages", params={"after": after, "limit": 200})
            assert r.status_code == 200, r.text
            page = r.json()
            messages.extend(page["messages"])
            if not page["more"]:
                return messages
            after = page["messages"][-1]["seq"]


async def _welcome(ws) -> None:
    assert orjson.loads(await ws.get_message())["type"] == "welcome"
    assert orjson.loads(await ws.get_message())["type"] == "synced"


async def test_sigkill_mid_stream_loses_no_acked_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    token = await _token(server.http_url, "writer")
    acked: dict[str, int] = {}
    total = 3000
    try:
        async with open_websocket_url(f"{server.ws_url}?token={token}") as ws:
            await _welcome(ws)
            await ws.send_message(orjson.dumps({"type": "join", "room": "crash"}).decode())
            assert orjson.loads(await ws.get_message())["type"] == "joined"

            async def pump() -> None:
                try:
                    for i in range(total):
                        frame = {"type": "send", "room": "crash", "id": f"m{i}", "text": f"x{i}"}
                        await ws.send_message(orjson.dumps(frame).decode())
                except ConnectionClosed:
                    return  # the server died under us: expected

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                with trio.fail_after(60):
                    while len(acked) < total // 3:
                        event = orjson.loads(await ws.get_message())
                        if event["type"] == "ack":
                            acked[event["id"]] = event["seq"]
                server.proc.send_signal(signal.SIGKILL)  # while sends and commits are in flight
                with trio.move_on_after(10):
                    while True:
                        event = orjson.loads(await ws.get_message())
                        if event["type"] == "ack":
                            acked[event["id"]] = event["seq"]
    except* (ConnectionClosed, trio.BrokenResourceError, OSError):
        pass  # the connection dies with the server
    assert await server.wait() == -signal.SIGKILL
    assert len(acked) >= total // 3

    restarted = ServerProcess(tmp_path)
    await restarted.start()
    try:
        stored = await _all_messages(restarted.http_url, await _token(restarted.http_url, "writer"), "crash")
        by_id = {m["id"]: m["seq"] for m in stored}
        missing = {i: s for i, s in acked.items() if by_id.get(i) != s}
        assert not missing, f"{len(missing)} acked messages lost or renumbered after kill -9"
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1)), "seq gap or duplicate"
        assert len(by_id) == len(stored), "a message was stored twice"
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
        await restarted.wait()


async def test_sigterm_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    tokens = [await _token(server.http_url, name) for name in ("term1", "term2")]
    codes: list[int | None] = []
    async with trio.open_nursery() as nursery:
        ready = trio.Semaphore(0)

        async def client(token: str) -> None:
            async with open_websocket_url(f"{server.ws_url}?token={token}") as ws:
                await _welcome(ws)
                await ws.send_message(orjson.dumps({"type": "join", "room": "lobby"}).decode())
                ready.release()
                try:
                    with trio.fail_after(30):
                        while True:
                            await ws.get_message()
                except ConnectionClosed as closed:
                    codes.append(closed.reason.code)

        for token in tokens:
            nursery.start_soon(client, token)
        for _ in tokens:
            await ready.acquire()
        server.proc.send_signal(signal.SIGTERM)
    assert codes == [1001, 1001]
    assert await server.wait() == 0
    assert "stopped" in server.log_path.read_text()
