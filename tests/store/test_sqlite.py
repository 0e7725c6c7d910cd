"""SQLite-specific behaviour: files, migrations, WAL, failure atomicity, concurrency, crashes."""

from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.testing

import chat_actors
from chat_actors import errors
from chat_actors.store import NewMessage, RoomBatch, open_store, parse_sqlite_url
from chat_actors.store.migrations import load_migrations, split_statements
from chat_actors.store.sqlite import SqliteStore


def url(path: pathlib.Path) -> str:
    return f"sqlite:///{path}"


def msg(sender: str, client_id: str, text: str = "hi", ts: int = 1000) -> NewMessage:
    return NewMessage(sender, client_id, text, None, ts)


def raw(path: pathlib.Path) -> sqlite3.Connection:
    """A second, independent connection, as an operator's sqlite3 shell would be."""
    return sqlite3.connect(path, isolation_level=None)


async def test_persistence_across_reopen(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)) as store:
        await store.create_user("alice", "h", 1)
        await store.create_room("general", kind="public", owner="alice", ts=2)
        await store.create_room("secret", kind="private", owner="alice", ts=3)
        await store.add_grant("secret", "bob")
        await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=4)
        await store.commit(RoomBatch("general", (msg("alice", "c1"), msg("bob", "c2")), joins=("bob",)))
        await store.commit(RoomBatch("dm:alice:bob", (NewMessage("bob", "d1", "psst", {"k": [1]}, 5),)))
    first = raw(db).execute("SELECT version, name, applied_ts FROM schema_migrations").fetchall()
    assert [v for v, _, _ in first] == [m.version for m in load_migrations()]

    async with open_store(url(db)) as store:
        assert (await store.get_user("alice")).password_hash == "h"
        snap = await store.load_room("general")
        assert snap.info.last_seq == 2 and snap.members == {"alice", "bob"}
        assert dict(snap.cursors) == {"alice": 1, "bob": 2}
        assert (await store.load_room("secret")).grants == {"alice", "bob"}
        [dm] = await store.undelivered_direct("alice", 10)
        assert (dm.room, dm.seq, dm.text, dm.meta) == ("dm:alice:bob", 1, "psst", {"k": [1]})
        assert (await store.commit(RoomBatch("general", (msg("alice", "c1"),))))[0].duplicate
        assert (await store.commit(RoomBatch("general", (msg("alice", "c3"),))))[0].seq == 3
    again = raw(db).execute("SELECT version, name, applied_ts FROM schema_migrations").fetchall()
    assert again == first  # not reapplied


async def test_url_paths(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///data/nested/chat.db") as store:
        assert isinstance(store, SqliteStore)
        await store.ping()
    assert (tmp_path / "data" / "nested" / "chat.db").is_file()
    absolute = tmp_path / "abs" / "deeper" / "x.db"
    async with open_store(f"sqlite:///{absolute}?synchronous=full&readers=2") as store:
        assert store.path == str(absolute) and store.synchronous == "FULL"
    assert absolute.is_file()
    assert parse_sqlite_url("sqlite:///rel/x.db") == ("rel/x.db", {})
    assert parse_sqlite_url("sqlite:////abs/x.db?readers=3") == ("/abs/x.db", {"readers": "3"})
    for bad in (
        "sqlite://host/x.db",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///x.db?bogus=1",
        "sqlite:///x.db?synchronous=off",
        "postgres://x",
        "nope",
    ):
        with pytest.raises(ValueError):
            async with open_store(bad):
                pass


async def test_wal_mode(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)):
        assert raw(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_failing_commit_keeps_nothing(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)) as store:
        await store.create_room("general", kind="public", owner="alice", ts=1)
        await store.commit(RoomBatch("general", (msg("alice", "c0"),)))
        # Fail the batch at its last step (membership rows), after its messages, last_seq and
        # cursor updates ran inside the transaction.
        raw(db).execute(
            "CREATE TRIGGER fail_join BEFORE INSERT ON members WHEN NEW.username = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
        batch = RoomBatch(
            "general", (msg("bob", "c1"), msg("carol", "c2")), joins=("dave", "boom"), cursors=(("alice", 3),)
        )
        with pytest.raises(errors.Unavailable):
            await store.commit(batch)
        snap = await store.load_room("general")
        assert snap.info.last_seq == 1 and snap.members == {"alice"} and dict(snap.cursors) == {"alice": 1}
        page, _ = await store.history("general", before=None, after=None, limit=10)
        assert [m.client_id for m in page] == ["c0"]
        assert await store.find_message("general", "bob", "c1") is None

        raw(db).execute("DROP TRIGGER fail_join")
        results = await store.commit(batch)  # the retry lands as if the failure never happened
        assert [(r.seq, r.duplicate) for r in results] == [(2, False), (3, False)]
        assert (await store.load_room("general")).members == {"alice", "boom", "dave"}


async def test_commit_to_room_dropped_underneath(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)) as store:
        await store.create_room("gone", kind="public", owner=None, ts=1)
        raw(db).execute("DELETE FROM rooms WHERE name = 'gone'")
        with pytest.raises(errors.NotFound):
            await store.commit(RoomBatch("gone", (msg("alice", "c1"),)))
        assert raw(db).execute("SELECT count(*) FROM messages").fetchone()[0] == 0


async def test_newer_schema_is_refused(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)):
        pass
    raw(db).execute("INSERT INTO schema_migrations (version, name, applied_ts) VALUES (9999, 'future', 0)")
    with pytest.raises(errors.Unavailable, match="9999"):
        async with open_store(url(db)):
            pass


async def test_unreadable_file_is_unavailable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not an sqlite database, just text" * 100)
    with pytest.raises(errors.Unavailable):
        async with open_store(url(tmp_path / "not-a-db")):
            pass


async def test_concurrent_reads_while_committing(tmp_path: pathlib.Path) -> None:
    batches, size = 40, 5
    async with open_store(url(tmp_path / "chat.db") + "?readers=3") as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        done = trio.Event()
        observed: list[int] = []

        async def writer() -> None:
            for b in range(batches):
                await store.commit(RoomBatch("general", tuple(msg("alice", f"{b}-{i}") for i in range(size))))
            done.set()

        async def reader() -> None:
            last = 0
            while not done.is_set():
                info = await store.get_room("general")
                assert info.last_seq >= last  # never goes back
                last = info.last_seq
                page, _ = await store.history("general", before=None, after=None, limit=50)
                got = [m.seq for m in page]
                assert got == list(range(got[0], got[0] + len(got))) if got else True  # gap-free
                assert len(got) % size == 0  # batches are atomic: never half a batch
                observed.append(len(got))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(reader)
            nursery.start_soon(writer)
        assert (await store.get_room("general")).last_seq == batches * size
        assert observed  # the readers did run alongside the writer


async def test_cancelled_commit_is_not_abandoned(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    async with open_store(url(db)) as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        blocker = raw(db)
        blocker.execute("BEGIN IMMEDIATE")  # the store's writer now waits in busy_timeout
        returned: list[object] = []

        async def committer() -> None:
            returned.append(await store.commit(RoomBatch("general", (msg("alice", "c1"), msg("bob", "c2")))))

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(committer)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # arrives while the transaction waits in its worker thread
                blocker.execute("COMMIT")
        # The commit was not abandoned: the caller waited for it and got its outcome.
        assert [[r.seq for r in results] for results in returned] == [[1, 2]]
        page, _ = await store.history("general", before=None, after=None, limit=10)
        assert [m.seq for m in page] == [1, 2]


async def test_aclose_waits_for_the_inflight_commit(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    store = await SqliteStore.open(str(db))
    await store.create_room("general", kind="public", owner=None, ts=1)
    blocker = raw(db)
    blocker.execute("BEGIN IMMEDIATE")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.commit, RoomBatch("general", (msg("alice", "c1"),)))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(store.aclose)
        await trio.testing.wait_all_tasks_blocked()
        blocker.execute("COMMIT")
    with pytest.raises(errors.Unavailable):
        await store.commit(RoomBatch("general", (msg("alice", "c2"),)))
    assert raw(db).execute("SELECT seq, client_id FROM messages").fetchall() == [(1, "c1")]


_CHILD = textwrap.dedent(
    """
    import sys, trio
    from chat_actors.store import NewMessage, RoomBatch, open_store

    async def main(path):
        async with open_store("sqlite:///" + path) as store:
            await store.ensure_room("general", kind="public", owner=None, ts=1)
            results = await store.commit(RoomBatch("general", tuple(
                NewMessage("alice", f"c{i}", f"text {i}", None, i) for i in range(50))))
            print("acked", results[-1].seq, flush=True)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1])
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_acked_batch_survives_kill_9(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    root = os.path.dirname(os.path.dirname(chat_actors.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, env=env
    )
    try:
        output = b""
        while not output.endswith(b"\n"):
            chunk = await child.stdout.receive_some()
            assert chunk, "child exited before acking"
            output += chunk
        assert output.split() == [b"acked", b"50"]
        child.send_signal(signal.SIGKILL)  # no chance to checkpoint, close or flush anything
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await child.stdout.aclose()
    assert child.returncode == -signal.SIGKILL
    async with open_store(url(db)) as store:
        page, more = await store.history("general", before=None, after=None, limit=100)
        assert [m.seq for m in page] == list(range(1, 51)) and not more
        assert page[-1].text == "text 49"


def test_split_statements() -> None:
    script = (
        "-- c1; not a statement\nCREATE TABLE a (x TEXT DEFAULT ';');\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END;\n-- trailing\n"
    )
    parts = split_statements(script)
    assert len(parts) == 2 and parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
