"""`/readyz` follows PROTOCOL section 8: `{"status","store","bus"}`, each component "ok"/"down".

200 "ok" when both answer, 200 "degraded" when only the bus is down, 503 "unavailable" when the
store is down. The down case is a real outage of the SQLite store: another process holds the
locks of the database's WAL index (`chat.db-shm`), so every read and write of the server waits
and then fails with SQLITE_PROTOCOL, as when a stuck process holds them. (The write-lock
outage of tests/integration/test_store_outage.py does not stop reads in WAL mode, and the
store's readiness probe is a read: see the note in the report about a write-aware ping.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from chat_actors.http_api import readiness
from integration.client import http

#: held by a separate process: POSIX record locks never conflict within one process. SQLite's
#: unix VFS locks bytes 120..127 of the -shm file (write, checkpoint, recover, 5 read marks).
LOCKER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
deadline = time.monotonic() + 20
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120, os.SEEK_SET)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.01)
print("locked", flush=True)
sys.stdin.read()
"""


def test_readiness_from_components() -> None:
    assert readiness({"store": "ok", "bus": "ok"}) == ("ok", 200)
    assert readiness({"store": "ok", "bus": "down"}) == ("degraded", 200)
    assert readiness({"store": "down", "bus": "ok"}) == ("unavailable", 503)
    assert readiness({"store": "down", "bus": "down"}) == ("unavailable", 503)


async def test_readyz_ok(server) -> None:
    async with http(server.http_url) as h:
        r = await h.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "ok", "bus": "ok"}


async def test_readyz_503_while_the_store_is_down_then_ok_again(server, tmp_path: Path) -> None:
    await server.user("alice")  # the database (and its -shm file) is in use
    shm = tmp_path / "chat.db-shm"
    assert shm.exists()
    locker = await trio.lowlevel.open_process(
        [sys.executable, "-c", LOCKER, str(shm)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        with trio.fail_after(30):
            assert (await locker.stdout.receive_some(64)).startswith(b"locked")
        async with http(server.http_url) as h:
            with trio.fail_after(30):
                r = await h.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json() == {"status": "unavailable", "store": "down", "bus": "ok"}
    finally:
        await locker.stdin.aclose()  # the locker exits, the locks go with it
        with trio.fail_after(30):
            await locker.wait()
    async with http(server.http_url) as h:
        with trio.fail_after(60):
            while (r := await h.get("/readyz")).status_code != 200:
                await trio.sleep(0.2)
    assert r.json() == {"status": "ok", "store": "ok", "bus": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
async def test_probes_need_no_auth(server, path: str) -> None:
    async with http(server.http_url) as h:
        assert (await h.get(path)).status_code == 200
