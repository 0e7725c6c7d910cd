"""The embedded default store: one SQLite file in WAL mode, stdlib ``sqlite3`` in threads.

Threading model (why it is safe and why it is fast):

* **One writer connection**, reached only through ``trio.to_thread.run_sync`` with a
  ``CapacityLimiter(1)``. SQLite allows one writer at a time anyway; funnelling every write
  through one connection means writers queue in trio (cheap, cancellable while waiting)
  instead of spinning on SQLITE_BUSY. Successive calls may run on different worker
  threads, never two at once, so the connection is opened with ``check_same_thread=False``
  (sqlite3 is built serialized here; the limiter is what gives the one-at-a-time
  guarantee). Writes use ``abandon_on_cancel=False``: a write is never abandoned half way.
* **Group commit** for room batches (``group_commit``): batches of different rooms that
  arrive while a transaction runs are written together in the next one, one thread hop and
  one ``BEGIN IMMEDIATE ... COMMIT`` for the lot, each batch inside its own SAVEPOINT so a
  failing batch is rolled back alone. With many busy rooms the per-transaction cost (and
  under ``synchronous=full`` the fsync) is paid once per group instead of once per room.
* **A pool of reader connections** (``readers``, default 4) behind its own limiter with as
  many tokens as connections. A worker thread takes a connection from a thread-safe queue
  and puts it back when done, so each connection is used by one thread at a time. Reads use
  ``abandon_on_cancel=True`` (side-effect free); trio releases the limiter token only when
  the abandoned thread really finishes, and the connection goes back to the queue before
  that, so a token always finds a free connection. In WAL mode readers never block the
  writer nor each other, and each read statement (or snapshot) sees the last commit.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL`` by default. In WAL mode a
commit appends its frames to the -wal file with write() before COMMIT returns, so once
``commit`` returns (and the ack is sent) the data is in the OS page cache and survives
``kill -9`` of the server, which is what "acked = durable" promises (PROTOCOL section 5).
NORMAL skips the fsync per commit; an OS crash or power cut can lose the last commits but
never corrupts the file. ``sqlite:///path.db?synchronous=full`` fsyncs the WAL on every
commit for power-loss durability at the cost of one fsync per transaction (per group).
``busy_timeout`` (5 s) covers another process (a backup, an admin shell) holding a lock.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import trio

from chat_actors import errors
from chat_actors.store import (
    AppendResult,
    RoomBatch,
    RoomInfo,
    RoomListing,
    RoomSnapshot,
    StoredMessage,
    UserRecord,
    UserRoom,
    validate_room,
)
from chat_actors.store import migrations as _migrations
from chat_actors.store.group_commit import GroupCommitter, Outcome
from chat_actors.store.rows import MAX_INT, messages, seq_arg

__all__ = ["SqliteStore", "open_from_url", "parse_sqlite_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_READERS = 4
BUSY_TIMEOUT_MS = 5000
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}


# --- SQL (every query has an index: see migrations/0001_initial.sql) -----------------------

_MSG_COLS = "m.seq, m.client_id, m.sender, m.text, m.meta, m.ts"
_ROOM_COLS = "r.name, r.kind, r.owner, r.last_seq, r.created_ts"
_ROOM_ID = "(SELECT id FROM rooms WHERE name = ?)"

INSERT_USER = (
    "INSERT INTO users (username, password_hash, created_ts) VALUES (?, ?, ?) "
    "ON CONFLICT (username) DO NOTHING"
)
SELECT_USER = "SELECT username, password_hash, created_ts FROM users WHERE username = ?"
INSERT_ROOM = (
    "INSERT INTO rooms (name, kind, owner, last_seq, created_ts, dm_a, dm_b) VALUES (?, ?, ?, 0, ?, ?, ?) "
    "ON CONFLICT (name) DO NOTHING"
)
SELECT_ROOM = f"SELECT {_ROOM_COLS} FROM rooms AS r WHERE r.name = ?"
SELECT_ROOM_WITH_ID = f"SELECT r.id, {_ROOM_COLS} FROM rooms AS r WHERE r.name = ?"
SELECT_ROOM_ID = "SELECT id FROM rooms WHERE name = ?"
SELECT_ROOM_SEQ = "SELECT id, last_seq FROM rooms WHERE name = ?"
UPDATE_LAST_SEQ = "UPDATE rooms SET last_seq = ? WHERE id = ?"
INSERT_MEMBER = "INSERT INTO members (room_id, username) VALUES (?, ?) ON CONFLICT DO NOTHING"
DELETE_MEMBER = "DELETE FROM members WHERE room_id = ? AND username = ?"
INSERT_GRANT = "INSERT INTO grants (room_id, username) VALUES (?, ?) ON CONFLICT DO NOTHING"
UPSERT_CURSOR = (
    "INSERT INTO cursors (room_id, username, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (room_id, username) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > cursors.seq"
)
# The batch's (sender, client_id) keys go in as one JSON array; CROSS JOIN makes SQLite walk
# the array and probe UNIQUE (room_id, sender, client_id) once per key (~1 us a key against
# ~2.7 us for one SELECT per message on a 200k-row table; without CROSS JOIN the planner
# scans the whole room instead).
SELECT_DEDUP = """
SELECT m.sender, m.client_id, m.seq, m.ts FROM json_each(?) AS k CROSS JOIN messages AS m
ON m.room_id = ? AND m.sender = json_extract(k.value, '$[0]') AND m.client_id = json_extract(k.value, '$[1]')
"""
# json_extract stops at a NUL (SQLite 3.40), so keys holding one are probed one by one.
SELECT_DEDUP_ONE = "SELECT seq, ts FROM messages WHERE room_id = ? AND sender = ? AND client_id = ?"
INSERT_MESSAGE = (
    "INSERT INTO messages (room_id, seq, client_id, sender, text, meta, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SELECT_GRANTS = "SELECT username FROM grants WHERE room_id = ?"
SELECT_MEMBERS_BY_ID = "SELECT username FROM members WHERE room_id = ?"
SELECT_CURSORS = "SELECT username, seq FROM cursors WHERE room_id = ?"
SELECT_MEMBERS = f"SELECT username FROM members WHERE room_id = {_ROOM_ID} ORDER BY username"
FIND_MESSAGE = f"SELECT seq, ts FROM messages WHERE room_id = {_ROOM_ID} AND sender = ? AND client_id = ?"


def _range(where: str, order: str = "ASC", room: str = _ROOM_ID) -> str:
    """A page of one room's messages: served by UNIQUE (room_id, seq) in either direction."""
    return f"SELECT {_MSG_COLS} FROM messages AS m WHERE m.room_id = {room}{where} ORDER BY m.seq {order} LIMIT ?"


HISTORY_LATEST = _range("", "DESC")
HISTORY_BEFORE = _range(" AND m.seq < ?", "DESC")
HISTORY_AFTER = _range(" AND m.seq > ?")
HISTORY_BETWEEN = _range(" AND m.seq > ? AND m.seq < ?")
MESSAGES_UPTO = _range(" AND m.seq > ? AND m.seq <= ?")
MESSAGES_AFTER_BY_ID = _range(" AND m.seq > ?", room="?")
_DM_ROOM_IDS = "SELECT id FROM rooms WHERE dm_a = :user UNION SELECT id FROM rooms WHERE dm_b = :user"
USER_ROOMS = f"""
SELECT r.name, r.last_seq, coalesce(c.seq, 0)
FROM rooms AS r LEFT JOIN cursors AS c ON c.room_id = r.id AND c.username = :user
WHERE r.id IN (SELECT room_id FROM members WHERE username = :user UNION {_DM_ROOM_IDS})
ORDER BY r.name
LIMIT :limit
"""
COUNT_USER_ROOMS = f"""
SELECT count(*) FROM (SELECT room_id FROM members WHERE username = :user UNION {_DM_ROOM_IDS})
"""
LIST_ROOMS = f"""
SELECT {_ROOM_COLS}, (SELECT count(*) FROM members AS m WHERE m.room_id = r.id)
FROM rooms AS r
WHERE r.id IN (
    SELECT id FROM rooms WHERE kind = 'public'
    UNION SELECT id FROM rooms WHERE owner = :user AND kind = 'private'
    UNION SELECT g.room_id FROM grants AS g JOIN rooms AS p ON p.id = g.room_id
          WHERE g.username = :user AND p.kind = 'private'
    UNION {_DM_ROOM_IDS})
ORDER BY r.name
"""
UNREAD_DIRECT_ROOMS = f"""
SELECT r.id, r.name, coalesce(c.seq, 0) AS read
FROM rooms AS r LEFT JOIN cursors AS c ON c.room_id = r.id AND c.username = :user
WHERE r.id IN ({_DM_ROOM_IDS}) AND r.last_seq > coalesce(c.seq, 0)
ORDER BY r.name
"""
PING = "SELECT max(version) FROM schema_migrations"


class _Closed(Exception):
    """Raised inside a worker thread when the store was closed while the call queued."""


def _connect(path: str, *, writer: bool, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if writer:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {path} to WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.rollback()
    except sqlite3.Error:
        log.exception("rollback failed")


def _transaction(conn: sqlite3.Connection, body: Callable[..., T], *args: Any) -> T:
    """Run ``body(conn, *args)`` inside BEGIN IMMEDIATE ... COMMIT; roll back on any error."""
    _rollback(conn)  # a failed ROLLBACK earlier must not wedge every later write
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _snapshot(conn: sqlite3.Connection, body: Callable[..., T], *args: Any) -> T:
    """Run several reads in one read transaction so they see the same commit."""
    conn.execute("BEGIN")
    try:
        return body(conn, *args)
    finally:
        _rollback(conn)


def _room_info(row: tuple) -> RoomInfo:
    name, kind, owner, last_seq, created_ts = row
    return RoomInfo(name, kind, owner, last_seq, created_ts)


# --- write bodies (run inside _transaction on the writer connection) --------------------


def _create_user(conn: sqlite3.Connection, username: str, password_hash: str, ts: int) -> None:
    if conn.execute(INSERT_USER, (username, password_hash, ts)).rowcount == 0:
        raise errors.Conflict(f"user {username!r} exists")


def _create_room(
    conn: sqlite3.Connection, name: str, kind: str, owner: str | None, ts: int, must_create: bool
) -> RoomInfo:
    participants = validate_room(name, kind)
    dm_a, dm_b = participants if participants else (None, None)
    cur = conn.execute(INSERT_ROOM, (name, kind, owner, ts, dm_a, dm_b))
    if cur.rowcount == 0:
        if must_create:
            raise errors.Conflict(f"room {name!r} exists")
        return _room_info(conn.execute(SELECT_ROOM, (name,)).fetchone())
    room_id = cur.lastrowid
    if owner is not None:
        conn.execute(INSERT_MEMBER, (room_id, owner))
        if kind == "private":
            conn.execute(INSERT_GRANT, (room_id, owner))
    for user in participants or ():  # both users of a direct room are its members
        conn.execute(INSERT_MEMBER, (room_id, user))
    return RoomInfo(name, kind, owner, 0, ts)  # type: ignore[arg-type]


def _add_grant(conn: sqlite3.Connection, room: str, user: str) -> None:
    row = conn.execute(SELECT_ROOM_ID, (room,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no room {room!r}")
    conn.execute(INSERT_GRANT, (row[0], user))


def _commit(conn: sqlite3.Connection, batch: RoomBatch) -> list[AppendResult]:
    row = conn.execute(SELECT_ROOM_SEQ, (batch.room,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no room {batch.room!r}")
    room_id, last_seq = row
    results: list[AppendResult] = []
    if batch.messages:
        keys = list(dict.fromkeys((m.sender, m.client_id) for m in batch.messages))
        plain = [k for k in keys if "\x00" not in k[0] and "\x00" not in k[1]]
        seen: dict[tuple[str, str], tuple[int, int]] = {
            (sender, client_id): (seq, ts)
            for sender, client_id, seq, ts in conn.execute(SELECT_DEDUP, (orjson.dumps(plain), room_id))
        }
        for key in (k for k in keys if "\x00" in k[0] or "\x00" in k[1]):
            row = conn.execute(SELECT_DEDUP_ONE, (room_id, *key)).fetchone()
            if row is not None:
                seen[key] = (row[0], row[1])
        rows: list[tuple] = []
        sender_seq: dict[str, int] = {}
        for msg in batch.messages:
            key = (msg.sender, msg.client_id)
            hit = seen.get(key)
            if hit is not None:  # stored earlier, or earlier in this batch
                results.append(AppendResult(hit[0], hit[1], True))
                continue
            last_seq += 1
            meta = None if msg.meta is None else orjson.dumps(msg.meta).decode()
            rows.append((room_id, last_seq, msg.client_id, msg.sender, msg.text, meta, msg.ts))
            sender_seq[msg.sender] = last_seq
            seen[key] = (last_seq, msg.ts)
            results.append(AppendResult(last_seq, msg.ts, False))
        if rows:
            conn.executemany(INSERT_MESSAGE, rows)
            conn.execute(UPDATE_LAST_SEQ, (last_seq, room_id))
            conn.executemany(UPSERT_CURSOR, [(room_id, u, s) for u, s in sender_seq.items()])
    if batch.joins:
        conn.executemany(INSERT_MEMBER, [(room_id, u) for u in batch.joins])
    if batch.leaves:
        conn.executemany(DELETE_MEMBER, [(room_id, u) for u in batch.leaves])
    if batch.cursors:
        moves = [(room_id, u, min(s, last_seq)) for u, s in batch.cursors if min(s, last_seq) > 0]
        conn.executemany(UPSERT_CURSOR, moves)
    return results


def _unavailable(exc: sqlite3.Error) -> errors.Unavailable:
    """The caller's view of a backend failure: nothing was kept, it may retry."""
    failure = errors.Unavailable(f"store write failed: {exc}")
    failure.__cause__ = exc  # as ``raise ... from exc`` would
    return failure


def _batch_failure(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        log.warning("sqlite write %s failed: %s", _commit.__name__, exc)
        return _unavailable(exc)
    return exc


def _commit_group(conn: sqlite3.Connection, batches: list[RoomBatch]) -> list[Outcome[list[AppendResult]]]:
    """Commit several rooms' batches in one transaction, each failing or succeeding alone.

    A batch that raises is rolled back to its SAVEPOINT and gets its exception as outcome;
    the others are kept. If the transaction itself fails (BEGIN, a savepoint, COMMIT),
    nothing is kept and every batch gets errors.Unavailable. A lone batch skips the
    savepoint: that is the common case when the store is not busy.
    """
    if len(batches) == 1:
        try:
            return [_transaction(conn, _commit, batches[0])]
        except Exception as exc:
            return [_batch_failure(exc)]
    _rollback(conn)  # as in _transaction: an earlier failed ROLLBACK must not wedge writes
    outcomes: list[Outcome[list[AppendResult]]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for batch in batches:
            conn.execute("SAVEPOINT batch")
            try:
                outcomes.append(_commit(conn, batch))
            except Exception as exc:
                conn.execute("ROLLBACK TO batch")
                outcomes.append(_batch_failure(exc))
            conn.execute("RELEASE batch")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        log.warning("sqlite write %s failed for a group of %d batches: %s", _commit.__name__, len(batches), exc)
        return [_unavailable(exc) for _ in batches]
    except BaseException:
        _rollback(conn)
        raise
    return outcomes


# --- read bodies (run on a reader connection) --------------------------------------------


def _get_user(conn: sqlite3.Connection, username: str) -> UserRecord | None:
    row = conn.execute(SELECT_USER, (username,)).fetchone()
    return None if row is None else UserRecord(*row)


def _get_room(conn: sqlite3.Connection, name: str) -> RoomInfo | None:
    row = conn.execute(SELECT_ROOM, (name,)).fetchone()
    return None if row is None else _room_info(row)


def _load_room(conn: sqlite3.Connection, name: str) -> RoomSnapshot | None:
    row = conn.execute(SELECT_ROOM_WITH_ID, (name,)).fetchone()
    if row is None:
        return None
    room_id, info = row[0], _room_info(row[1:])
    grants = frozenset(u for (u,) in conn.execute(SELECT_GRANTS, (room_id,)))
    members = frozenset(u for (u,) in conn.execute(SELECT_MEMBERS_BY_ID, (room_id,)))
    cursors = dict(conn.execute(SELECT_CURSORS, (room_id,)).fetchall())
    return RoomSnapshot(info, grants, members, cursors)


def _history(
    conn: sqlite3.Connection, room: str, before: int | None, after: int | None, limit: int
) -> tuple[list[StoredMessage], bool]:
    """PROTOCOL section 5 paging; one row beyond the page tells whether ``more`` exist."""
    before, after = seq_arg(before), seq_arg(after)
    if after is None:
        sql, args = (HISTORY_LATEST, (room,)) if before is None else (HISTORY_BEFORE, (room, before))
    elif before is None:
        sql, args = HISTORY_AFTER, (room, after)
    else:
        sql, args = HISTORY_BETWEEN, (room, after, before)
    rows = conn.execute(sql, (*args, min(limit, MAX_INT - 1) + 1)).fetchall()
    more = len(rows) > limit
    del rows[limit:]
    if after is None:
        rows.reverse()  # fetched newest first
    return messages(room, rows), more


def _between(conn: sqlite3.Connection, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
    args = (room, seq_arg(after), seq_arg(upto), min(limit, MAX_INT))
    return messages(room, conn.execute(MESSAGES_UPTO, args).fetchall())


def _find(conn: sqlite3.Connection, room: str, sender: str, client_id: str) -> AppendResult | None:
    row = conn.execute(FIND_MESSAGE, (room, sender, client_id)).fetchone()
    return None if row is None else AppendResult(row[0], row[1], True)


def _user_rooms(conn: sqlite3.Connection, user: str, limit: int) -> list[UserRoom]:
    return [UserRoom(*row) for row in conn.execute(USER_ROOMS, {"user": user, "limit": limit})]


def _count_user_rooms(conn: sqlite3.Connection, user: str) -> int:
    return conn.execute(COUNT_USER_ROOMS, {"user": user}).fetchone()[0]


def _list_rooms(conn: sqlite3.Connection, user: str) -> list[RoomListing]:
    return [RoomListing(_room_info(row[:5]), row[5]) for row in conn.execute(LIST_ROOMS, {"user": user})]


def _undelivered(conn: sqlite3.Connection, user: str, per_room_limit: int) -> list[StoredMessage]:
    out: list[StoredMessage] = []
    for room_id, name, read in conn.execute(UNREAD_DIRECT_ROOMS, {"user": user}).fetchall():
        out.extend(
            messages(name, conn.execute(MESSAGES_AFTER_BY_ID, (room_id, read, per_room_limit)).fetchall())
        )
    return out


def _room_members(conn: sqlite3.Connection, room: str) -> list[str]:
    return [u for (u,) in conn.execute(SELECT_MEMBERS, (room,))]


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute(PING).fetchall()


class SqliteStore:
    """``Store`` on one SQLite file (see the module docstring for threads and durability).

    Create it with ``await SqliteStore.open(path)`` or through ``open_store(url)``.
    """

    def __init__(
        self, path: str, writer: sqlite3.Connection, readers: list[sqlite3.Connection], synchronous: str
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: sqlite3.Connection | None = writer
        self._write_limiter = trio.CapacityLimiter(1)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for conn in readers:
            self._readers.put(conn)
        self._reader_count = len(readers)
        self._read_limiter = trio.CapacityLimiter(len(readers))
        self._closed = False
        # Same limiter as _write: a group and any other write never share the connection.
        self._committer: GroupCommitter[RoomBatch, list[AppendResult]] = GroupCommitter(
            self._run_commits, limiter=self._write_limiter
        )

    @classmethod
    async def open(
        cls, path: str, *, readers: int = DEFAULT_READERS, synchronous: str = "normal"
    ) -> SqliteStore:
        """Open (creating the file and its parent directories) and migrate the schema.

        errors.Unavailable if the file cannot be opened or its schema is newer than ours.
        """
        if readers < 1:
            raise ValueError("readers must be >= 1")
        sync_mode = _SYNCHRONOUS.get(synchronous.lower())
        if sync_mode is None:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}")

        def open_sync() -> tuple[sqlite3.Connection, list[sqlite3.Connection]]:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            opened: list[sqlite3.Connection] = []
            try:
                writer = _connect(path, writer=True, synchronous=sync_mode)
                opened.append(writer)
                _migrations.apply_sqlite(writer)
                pool = []
                for _ in range(readers):
                    pool.append(_connect(path, writer=False, synchronous=sync_mode))
                    opened.append(pool[-1])
            except BaseException:
                for conn in opened:
                    conn.close()
                raise
            return writer, pool

        try:
            writer, pool = await trio.to_thread.run_sync(open_sync, abandon_on_cancel=False)
        except (sqlite3.Error, OSError, _migrations.MigrationError) as exc:
            raise errors.Unavailable(f"cannot open sqlite store {path}: {exc}") from exc
        log.info("sqlite store open at %s (WAL, synchronous=%s, %d readers)", path, sync_mode, readers)
        return cls(path, writer, pool, sync_mode)

    # --- plumbing ----------------------------------------------------------------------

    def _run_write(self, body: Callable[..., T], args: tuple) -> T:
        conn = self._writer
        if conn is None:
            raise _Closed
        return _transaction(conn, body, *args)

    async def _write(self, body: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise errors.Unavailable("store is closed")
        try:
            return await trio.to_thread.run_sync(
                self._run_write, body, args, limiter=self._write_limiter, abandon_on_cancel=False
            )
        except _Closed:
            raise errors.Unavailable("store is closed") from None
        except sqlite3.Error as exc:
            log.warning("sqlite write %s failed: %s", body.__name__, exc)
            raise errors.Unavailable(f"store write failed: {exc}") from exc

    def _run_commits(self, batches: list[RoomBatch]) -> list[Outcome[list[AppendResult]]]:
        conn = self._writer
        if conn is None:
            return [errors.Unavailable("store is closed") for _ in batches]
        return _commit_group(conn, batches)

    @property
    def commit_groups(self) -> int:
        """Groups ``commit`` has run so far, one thread hop and transaction each.

        Fewer groups than commits means commits shared transactions (for tests and metrics).
        """
        return self._committer.groups

    def _run_read(self, body: Callable[..., T], args: tuple) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            raise _Closed from None
        try:
            return body(conn, *args)
        finally:
            self._readers.put(conn)

    async def _read(self, body: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise errors.Unavailable("store is closed")
        try:
            return await trio.to_thread.run_sync(
                self._run_read, body, args, limiter=self._read_limiter, abandon_on_cancel=True
            )
        except _Closed:
            raise errors.Unavailable("store is closed") from None
        except sqlite3.Error as exc:
            log.warning("sqlite read %s failed: %s", body.__name__, exc)
            raise errors.Unavailable(f"store read failed: {exc}") from exc

    # --- Store ----------------------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, ts: int) -> None:
        await self._write(_create_user, username, password_hash, ts)

    async def get_user(self, username: str) -> UserRecord | None:
        return await self._read(_get_user, username)

    async def create_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        return await self._write(_create_room, name, kind, owner, ts, True)

    async def ensure_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        existing = await self._read(_get_room, name)
        if existing is not None:
            return existing
        return await self._write(_create_room, name, kind, owner, ts, False)

    async def get_room(self, name: str) -> RoomInfo | None:
        return await self._read(_get_room, name)

    async def load_room(self, name: str) -> RoomSnapshot | None:
        return await self._read(_snapshot, _load_room, name)

    async def add_grant(self, room: str, user: str) -> None:
        await self._write(_add_grant, room, user)

    async def commit(self, batch: RoomBatch) -> list[AppendResult]:
        """Write ``batch`` in the next group commit (shared with other rooms' batches)."""
        if self._closed:
            raise errors.Unavailable("store is closed")
        return await self._committer.commit(batch)

    async def find_message(self, room: str, sender: str, client_id: str) -> AppendResult | None:
        return await self._read(_find, room, sender, client_id)

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._read(_history, room, before, after, limit)

    async def messages_between(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._read(_between, room, after, upto, limit)

    async def user_rooms(self, user: str, limit: int = -1) -> list[UserRoom]:
        return await self._read(_user_rooms, user, limit)

    async def count_user_rooms(self, user: str) -> int:
        return await self._read(_count_user_rooms, user)

    async def list_rooms(self, user: str) -> list[RoomListing]:
        return await self._read(_list_rooms, user)

    async def undelivered_direct(self, user: str, per_room_limit: int) -> list[StoredMessage]:
        if per_room_limit < 1:
            raise ValueError("per_room_limit must be >= 1")
        return await self._read(_snapshot, _undelivered, user, per_room_limit)

    async def room_members(self, room: str) -> list[str]:
        return await self._read(_room_members, room)

    async def ping(self) -> None:
        await self._read(_ping)

    async def aclose(self) -> None:
        """Stop accepting calls, wait for the in-flight write and reads, close connections.

        Shielded from cancellation: the wait is bounded by one transaction, and leaving
        connections open in worker threads would be worse than finishing it.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_writer, limiter=self._write_limiter)
            for _ in range(self._reader_count):
                await trio.to_thread.run_sync(self._close_one_reader, limiter=self._read_limiter)
        log.info("sqlite store at %s closed", self.path)

    def _close_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            conn.close()

    def _close_one_reader(self) -> None:
        try:
            self._readers.get_nowait().close()
        except queue.Empty:
            pass


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///rel.db`` -> ``rel.db`` (relative to cwd), ``sqlite:////abs.db`` -> ``/abs.db``.

    Query parameters (``?synchronous=full&readers=8``) are returned as options.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ValueError(f"sqlite URLs have no host (use sqlite:///rel.db or sqlite:////abs.db): {url!r}")
    if not parts.path.startswith("/") or len(parts.path) < 2:
        raise ValueError(f"sqlite URL needs a file path: {url!r}")
    path = urllib.parse.unquote(parts.path[1:])
    if path == ":memory:":
        raise ValueError("sqlite :memory: is per connection; use memory:// for an in-memory store")
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return path, options


async def open_from_url(url: str) -> SqliteStore:
    """``open_store``'s entry for ``sqlite:`` URLs: ``synchronous`` and ``readers`` options."""
    path, options = parse_sqlite_url(url)
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key == "synchronous":
            kwargs["synchronous"] = value
        elif key == "readers":
            kwargs["readers"] = int(value)
        else:
            raise ValueError(f"unknown sqlite store option {key!r} in {url!r}")
    return await SqliteStore.open(os.path.abspath(path), **kwargs)
