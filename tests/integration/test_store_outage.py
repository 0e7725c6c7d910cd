"""When the store cannot commit, a send answers `unavailable`, nothing is stored, and a retry works.

The outage is real: another SQLite connection holds the database's write lock for longer than
the server's busy timeout, which is what a stuck backup or admin shell does to a live server.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio


def _hold_write_lock(path: Path, locked: threading.Event, release: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(60)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.single_node("the outage is an SQLite write lock held beside the process (PostgreSQL: tests/store)")
async def test_send_while_store_locked_is_unavailable_then_retry_succeeds(server, tmp_path: Path) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        locked, release = threading.Event(), threading.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _hold_write_lock, tmp_path / "chat.db", locked, release)
            await trio.to_thread.run_sync(locked.wait, 10)
            try:
                err = await a.send_message("general", "lost?", id="m1")
            finally:
                release.set()
        assert err["type"] == "error" and err["code"] == "unavailable", err
        await b.assert_silent(0.3)  # nothing was broadcast
        ack = await a.send_message("general", "stored", id="m1")  # the client's retry
        assert ack["type"] == "ack" and ack["seq"] == 1, ack
        message = await b.expect("message", room="general")
        assert message["seq"] == 1 and message["text"] == "stored"
        page = await a.history("general")
        assert [m["text"] for m in page["messages"]] == ["stored"]
