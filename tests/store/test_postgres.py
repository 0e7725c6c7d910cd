"""PostgreSQL-specific behaviour: URLs, migrations under the advisory lock, batch isolation in a
group, and what cancellation and deadlines leave behind (the pool must stay clean).

Outages (a server that goes away, a network that goes silent) are in test_postgres_outage.py.
Each test gets a fresh database (``postgres_url``, tests/services.py); these tests fail
rather than skip under CHAT_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
import trio
import trio.testing

from chat_actors import errors
from chat_actors.store import NewMessage, RoomBatch, open_store
from chat_actors.store.migrations import POSTGRES_PACKAGE, load_migrations
from chat_actors.store.postgres import PostgresOptions, PostgresStore, parse_postgres_url
from services import postgres_url  # noqa: F401  (a fixture)

APP = "chat-actors"  # the application_name the store's sessions carry


def msg(sender: str, client_id: str, text: str = "hi", ts: int = 1000) -> NewMessage:
    return NewMessage(sender, client_id, text, None, ts)


@contextmanager
def admin(url: str) -> Iterator[psycopg.Connection]:
    """An operator's own session on the test database (not the store's)."""
    with psycopg.connect(url, autocommit=True, application_name="chat-test", connect_timeout=5) as conn:
        yield conn


def store_sessions(url: str) -> list[tuple[str, str | None]]:
    """(state, wait_event_type) of every session the store has open on the database."""
    with admin(url) as conn:
        return conn.execute(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (APP,),
        ).fetchall()


async def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (run in a thread) until true; a bounded wait, not a timing assertion."""
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.02)


def blocked_on_a_lock(url: str) -> bool:
    return any(wait == "Lock" for _, wait in store_sessions(url))


def pool_is_clean(url: str) -> bool:
    """Every session of the store is idle: none in a transaction, none running or waiting."""
    states = store_sessions(url)
    return bool(states) and all(state == "idle" for state, _ in states)


class RoomRowLock:
    """Another session holding ``room``'s row FOR UPDATE (PostgreSQL made slow) until
    ``release()`` (or the end of the with-block). A commit to the room then waits for the
    lock; so does a grant on it (its foreign key check's KEY SHARE conflicts with FOR UPDATE).
    """

    def __init__(self, url: str, room: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True, application_name="chat-test", connect_timeout=5)
        self._conn.execute("BEGIN")
        assert self._conn.execute("SELECT id FROM rooms WHERE name = %s FOR UPDATE", (room,)).fetchone()

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.execute("COMMIT")
            self._conn.close()

    def __enter__(self) -> RoomRowLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# --- URLs ------------------------------------------------------------------------------------


def test_url_options() -> None:
    conninfo, options = parse_postgres_url("postgresql://u:secret@127.0.0.1:5433/chat?pool=4&timeout=2.5&sslmode=disable")
    assert options == PostgresOptions(pool=4, timeout_s=2.5, connect_timeout_s=3.0)
    assert conninfo == "postgresql://u:secret@127.0.0.1:5433/chat?sslmode=disable"  # libpq's own pass through
    assert parse_postgres_url("postgres://127.0.0.1/chat?connect_timeout=7")[1].connect_timeout_s == 7.0
    assert parse_postgres_url("postgresql://127.0.0.1/chat")[1] == PostgresOptions()
    conninfo, _ = parse_postgres_url("postgresql://127.0.0.1/chat?options=-c%20search_path%3Dpublic&pool=2")
    assert conninfo_to_dict(conninfo)["options"] == "-c search_path=public"
    for bad in (
        "postgresql://127.0.0.1",  # no database name
        "postgresql://127.0.0.1/",
        "postgresql://127.0.0.1/chat?pool=0",
        "postgresql://127.0.0.1/chat?pool=many",
        "postgresql://127.0.0.1/chat?timeout=-1",
        "postgresql://u:secret@127.0.0.1/chat?pool=x",
        "mysql://127.0.0.1/chat",
    ):
        with pytest.raises(ValueError) as raised:
            parse_postgres_url(bad)
        assert "secret" not in str(raised.value)  # never a password in a message


async def test_open_store_opens_postgres(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=2&timeout=4") as store:
        assert isinstance(store, PostgresStore)
        assert store.options == PostgresOptions(pool=2, timeout_s=4.0)
        await store.ping()
        assert len(store_sessions(postgres_url)) == 2  # a fixed-size pool
    assert store_sessions(postgres_url) == []  # aclose closed every connection


async def test_unreachable_server_is_unavailable_promptly() -> None:
    with trio.fail_after(20):
        with pytest.raises(errors.Unavailable):
            async with open_store("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2"):
                pass


# --- migrations ------------------------------------------------------------------------------


async def test_migrations_are_recorded_and_not_reapplied(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=1") as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        await store.commit(RoomBatch("general", (msg("alice", "c1"),)))
    with admin(postgres_url) as conn:
        first = conn.execute("SELECT version, name, applied_ts FROM schema_migrations").fetchall()
    assert [v for v, _, _ in first] == [m.version for m in load_migrations(POSTGRES_PACKAGE)]
    async with open_store(postgres_url + "?pool=1") as store:
        assert (await store.commit(RoomBatch("general", (msg("alice", "c1"),))))[0].duplicate
        assert (await store.get_room("general")).last_seq == 1
    with admin(postgres_url) as conn:
        assert conn.execute("SELECT version, name, applied_ts FROM schema_migrations").fetchall() == first


async def test_nodes_starting_together_apply_the_schema_once(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat_actors.store.migrations")
    opened: list[PostgresStore] = []

    async def node() -> None:
        opened.append(await PostgresStore.open(postgres_url + "?pool=1"))

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(node)
        assert len(opened) == 6
        applied = [r for r in caplog.records if r.getMessage().startswith("applied schema migration")]
        assert len(applied) == len(load_migrations(POSTGRES_PACKAGE))  # by one node, once
        await opened[0].create_room("general", kind="public", owner=None, ts=1)
        assert (await opened[-1].get_room("general")).last_seq == 0  # one schema, shared
    finally:
        for store in opened:
            await store.aclose()
    with admin(postgres_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in load_migrations(POSTGRES_PACKAGE)]


async def test_newer_schema_is_refused(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=1"):
        pass
    with admin(postgres_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, applied_ts) VALUES (9999, 'future', 0)")
    with pytest.raises(errors.Unavailable, match="9999"):
        async with open_store(postgres_url + "?pool=1"):
            pass


# --- group commit ------------------------------------------------------------------------------


async def test_a_failing_batch_does_not_fail_its_group(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=2") as store:
        for room in ("first", "a", "b", "gone", "boom"):
            await store.create_room(room, kind="public", owner=None, ts=1)
        with admin(postgres_url) as conn:
            conn.execute("DELETE FROM rooms WHERE name = 'gone'")  # vanished underneath the store
            conn.execute(  # fails the batch at its last step, after its messages were inserted
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.username = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$;"
                "CREATE TRIGGER fail_join BEFORE INSERT ON members FOR EACH ROW EXECUTE FUNCTION boom()"
            )
        outcomes: dict[str, object] = {}

        async def commit(one: RoomBatch) -> None:
            try:
                outcomes[one.room] = await store.commit(one)
            except errors.ChatError as exc:
                outcomes[one.room] = exc

        def batch(room: str, *ids: str, **changes: tuple) -> RoomBatch:
            return RoomBatch(room, tuple(msg("alice", c) for c in ids), **changes)

        with trio.fail_after(30), RoomRowLock(postgres_url, "first") as lock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit, batch("first", "f1"))  # its group waits in PostgreSQL
                await wait_until(lambda: blocked_on_a_lock(postgres_url), "the first commit waits")
                groups_before = store.commit_groups
                nursery.start_soon(commit, batch("boom", "x1", "x2", joins=("boom",)))
                nursery.start_soon(commit, batch("a", "a1", "a2"))
                nursery.start_soon(commit, batch("gone", "g1"))
                nursery.start_soon(commit, batch("b", "b1"))
                await trio.testing.wait_all_tasks_blocked()
                lock.release()
        assert store.commit_groups - groups_before == 2  # "first", then the other four together
        assert [r.seq for r in outcomes["first"]] == [1]
        assert [r.seq for r in outcomes["a"]] == [1, 2]
        assert [r.seq for r in outcomes["b"]] == [1]
        assert isinstance(outcomes["gone"], errors.NotFound)
        assert isinstance(outcomes["boom"], errors.Unavailable)
        with admin(postgres_url) as conn:
            rows = conn.execute("SELECT client_id FROM messages ORDER BY client_id").fetchall()
            assert [c for (c,) in rows] == ["a1", "a2", "b1", "f1"]  # the failed batch left nothing
            conn.execute("DROP TRIGGER fail_join ON members")
        assert (await store.get_room("boom")).last_seq == 0
        assert [r.seq for r in await store.commit(batch("boom", "x1", "x2", joins=("boom",)))] == [1, 2]
        await wait_until(lambda: pool_is_clean(postgres_url), "pool clean")


# --- cancellation and deadlines -------------------------------------------------------------


def backend_pids(url: str) -> set[int]:
    with admin(url) as conn:
        return {
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
                (APP,),
            )
        }


async def test_cancelled_calls_are_interrupted_and_their_connections_come_back_clean(postgres_url: str) -> None:
    """A caller cancelled while PostgreSQL is slow returns at once; the statement is cancelled
    in the server (not left waiting), the transaction rolled back, and the connection goes
    back to the pool idle: the same backends serve afterwards, none was replaced."""
    async with open_store(postgres_url + "?pool=2") as store:
        await store.create_room("secret", kind="private", owner="alice", ts=1)
        await store.commit(RoomBatch("secret", (msg("alice", "c1"),)))
        pids = backend_pids(postgres_url)

        async def cancelled_while_blocked(call, *args) -> None:
            with trio.fail_after(10):  # the cancelled caller does not wait for PostgreSQL
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(call, *args)
                        await wait_until(lambda: blocked_on_a_lock(postgres_url), "the call waits")
                        scope.cancel()
            assert scope.cancelled_caught
            await wait_until(lambda: pool_is_clean(postgres_url), "the statement is cancelled in the server")

        with RoomRowLock(postgres_url, "secret"):  # a write waiting for a row lock
            await cancelled_while_blocked(store.add_grant, "secret", "bob")
        with admin(postgres_url) as locker:  # a read waiting for a table lock
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            await cancelled_while_blocked(store.messages_between, "secret", 0, 10, 10)
            locker.execute("ROLLBACK")

        assert (await store.load_room("secret")).grants == {"alice"}  # the cancelled grant did nothing
        async with trio.open_nursery() as nursery:  # both connections serve
            for _ in range(4):
                nursery.start_soon(store.messages_between, "secret", 0, 10, 10)
        assert backend_pids(postgres_url) == pids


async def test_cancelled_commit_commits_whole_or_not_at_all(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=2") as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        await store.commit(RoomBatch("general", (msg("alice", "c0"),)))
        batch = RoomBatch(
            "general", (msg("bob", "c1"), msg("carol", "c2"), msg("bob", "c3")), joins=("bob",), cursors=(("alice", 9),)
        )
        with trio.fail_after(30), RoomRowLock(postgres_url, "general") as lock:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(store.commit, batch)
                    await wait_until(lambda: blocked_on_a_lock(postgres_url), "the commit waits")
                    scope.cancel()
                    lock.release()
        page, _ = await store.history("general", before=None, after=None, limit=10)
        stored = [m.client_id for m in page[1:]]
        snapshot = await store.load_room("general")
        assert (stored, snapshot.members, snapshot.cursors.get("alice")) in (
            ([], frozenset(), 1),
            (["c1", "c2", "c3"], frozenset({"bob"}), 4),
        )
        [after] = await store.commit(RoomBatch("general", (msg("dave", "c4"),)))
        assert after.seq == 2 + len(stored)  # gap-free either way
        await wait_until(lambda: pool_is_clean(postgres_url), "no session left in a transaction")


async def test_commit_held_past_its_deadline_rolls_back_whole(postgres_url: str) -> None:
    async with open_store(postgres_url + "?pool=2&timeout=1") as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        with RoomRowLock(postgres_url, "general"):
            with trio.fail_after(10):
                with pytest.raises(errors.Unavailable):
                    await store.commit(RoomBatch("general", (msg("alice", "c1"), msg("bob", "c2")), joins=("bob",)))
            await wait_until(lambda: not blocked_on_a_lock(postgres_url), "the commit stopped waiting")
        assert (await store.load_room("general")).info.last_seq == 0
        assert await store.room_members("general") == []
        assert [r.seq for r in await store.commit(RoomBatch("general", (msg("alice", "c1"),)))] == [1]
        await wait_until(lambda: pool_is_clean(postgres_url), "no session left in a transaction")


async def test_cancelled_open_leaves_no_session_behind(postgres_url: str) -> None:
    """A node told to stop while it waits for another node's migration leaves nothing open."""
    from chat_actors.store.migrations import MIGRATION_LOCK_KEY

    with admin(postgres_url) as other_node:
        other_node.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))  # "migrating"
        with trio.fail_after(10):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(PostgresStore.open, postgres_url + "?pool=2")
                    await wait_until(lambda: blocked_on_a_lock(postgres_url), "the open waits for the lock")
                    scope.cancel()
        assert scope.cancelled_caught
        await wait_until(lambda: store_sessions(postgres_url) == [], "every session of the cancelled open is gone")
        other_node.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    async with open_store(postgres_url + "?pool=1") as store:  # and the next open migrates normally
        await store.ping()


def _messages_rows_read(plan: dict) -> int:
    """Rows the plan's scans of the messages table produced (EXPLAIN ANALYZE, FORMAT JSON)."""
    rows = 0
    if plan.get("Relation Name") == "messages" and "Scan" in plan.get("Node Type", ""):
        rows += plan["Actual Rows"] * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", []):
        rows += _messages_rows_read(child)
    return rows


async def test_a_commit_reads_only_its_own_keys_whatever_the_room_holds(postgres_url: str) -> None:
    """The dedup lookup of a batch goes to the (room, sender, client_id) index per message:
    a commit to a room with thousands of messages reads as few rows as one to an empty room
    (it once scanned every message of the room, so commits slowed down as rooms grew)."""
    from chat_actors.store import pg_sql as sql

    async with open_store(postgres_url) as store:
        await store.ensure_room("big", kind="public", owner=None, ts=1)
        for k in range(20):
            await store.commit(RoomBatch("big", [msg(f"u{i % 5}", f"old-{k}-{i}") for i in range(100)]))

    def explain() -> int:
        with admin(postgres_url) as conn, conn.transaction():
            conn.execute(sql.LOCK_ROOM, ("big",))
            args = ([f"u{i % 5}" for i in range(10)], [f"new-{i}" for i in range(10)], ["hi"] * 10,
                    [None] * 10, [1] * 10)
            [[plan]] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.APPEND, args).fetchall()
            return _messages_rows_read(plan[0]["Plan"])

    assert await trio.to_thread.run_sync(explain) <= 10
