"""The cluster store: PostgreSQL through psycopg 3 (sync connections) in worker threads.

Several nodes share one database (PROTOCOL section 9); it is the source of truth for seq,
messages, membership, grants, cursors and dedup keys. ``CHAT_STORE=postgresql://user@host/db``
(``postgres://`` works too); query parameters, all optional, are ours or libpq's:

* ``pool`` (default 8): connections this node keeps open. Also the number of worker threads
  that may talk to PostgreSQL at once (the limiter), so a thread always finds a connection.
* ``timeout`` (seconds, default 5): the bound on one store call, start to end (waiting for
  a connection, the statements, the commit). The server's ``statement_timeout`` is set a
  little below it, so a slow statement normally ends with a clean server-side cancel.
* ``connect_timeout`` (seconds, default 3): opening one connection; also how long a call
  waits for the pool to produce one while the server is unreachable.
* anything else (``sslmode``, ``application_name``, ``options``, ...) goes to libpq as is.

Threading and cancellation (``pg_calls.py``): every call runs its body in a worker thread
through ``trio.to_thread.run_sync(abandon_on_cancel=True)`` behind a limiter of pool size;
on cancellation or at the deadline the trio side returns at once and the thread is
interrupted (``cancel_safe()``, then a socket shutdown if the server cannot be reached).
A connection comes back to the pool only idle and outside any transaction; one that is
broken, or in a failed or unknown transaction state, is closed and replaced.

Outages: an idle connection whose socket has become readable (the server or a proxy closed
it) is discarded at checkout, so a restarted server costs no failed call per stale
connection. While no connection can be made every call fails with ``errors.Unavailable``
within ``connect_timeout`` (shortened to ``FAST_FAIL_S`` once the store knows it is down)
and the pool keeps reconnecting in the background, so the same store serves again once the
server is back. TCP keepalives and ``tcp_user_timeout`` bound a dead peer at the socket
level; a peer that accepts bytes but never answers (a hung server, a black hole) is caught
by the per-call deadline and the interrupt. ``idle_in_transaction_session_timeout`` makes
the server roll back and release the room locks of a node that vanished mid-transaction.

Room batches go through a ``GroupCommitter`` as in SQLite (see ``pg_commit.py`` for the
transaction and the lock order, ``pg_sql.py`` for the seq statement): with many busy rooms
it took 2.5 to 2.7 times the batches per second of one transaction per batch on the
development machine. A running group is not cancelled by its callers (the Store contract:
it commits or rolls back whole), but it is bounded by ``timeout``.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import psycopg
import trio
from psycopg import conninfo as pg_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

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
from chat_actors.store import pg_ops as ops
from chat_actors.store.group_commit import GroupCommitter, Outcome
from chat_actors.store.pg_calls import DeadlineExceeded, Interrupted, PgCall, run_interruptible
from chat_actors.store.pg_commit import commit_group, unavailable

__all__ = ["PostgresOptions", "PostgresStore", "open_from_url", "parse_postgres_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("postgresql", "postgres")
#: How long a call waits for a connection once the store has seen the server unreachable.
FAST_FAIL_S = 0.25
_IDLE = psycopg.pq.TransactionStatus.IDLE


@attrs.frozen
class PostgresOptions:
    """The URL options that are ours (module docstring); the rest is libpq's."""

    pool: int = 8
    timeout_s: float = 5.0
    connect_timeout_s: float = 3.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.pool <= 1000:
            raise ValueError(f"pool must be 1..1000, got {self.pool}")
        if not 0 < self.timeout_s <= 3600 or not 0 < self.connect_timeout_s <= 3600:
            raise ValueError("timeout and connect_timeout must be seconds in (0, 3600]")


_OPTION_KEYS = {"pool": ("pool", int), "timeout": ("timeout_s", float), "connect_timeout": ("connect_timeout_s", float)}


def parse_postgres_url(url: str) -> tuple[str, PostgresOptions]:
    """``postgresql://...?pool=8&timeout=5`` -> (the URL for libpq without our options, options).

    Raises ValueError for another scheme, a URL without a database name, a malformed or
    out-of-range option, or anything libpq would refuse to parse.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a postgresql URL: {_redacted(url)!r}")
    if not urllib.parse.unquote(parts.path).lstrip("/"):
        raise ValueError(f"postgresql URL needs a database name (postgresql://host/dbname): {_redacted(url)!r}")
    ours: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTION_KEYS:
            field, kind = _OPTION_KEYS[key]
            try:
                ours[field] = kind(value)
            except ValueError:
                raise ValueError(f"postgresql store option {key}={value!r} is not a number") from None
        else:
            rest.append((key, value))
    query = urllib.parse.urlencode(rest, quote_via=urllib.parse.quote)  # libpq decodes %20, not '+'
    conninfo = urllib.parse.urlunsplit(parts._replace(query=query))
    try:
        pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"malformed postgresql URL {_redacted(url)!r}: {exc}") from None
    return conninfo, PostgresOptions(**ours)


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)))
    except ValueError:
        return "<unparsable URL>"


def _describe(conninfo: str) -> str:
    """host:port/dbname as user, for logs (never the password)."""
    params = pg_conninfo.conninfo_to_dict(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}" + (
        f" as {params['user']}" if params.get("user") else ""
    )


def _session_kwargs(conninfo: str, options: PostgresOptions) -> dict[str, Any]:
    """Connection parameters every connection of the store gets (module docstring)."""
    timeout_ms = int(options.timeout_s * 1000)
    session = (
        f"-c statement_timeout={max(int(timeout_ms * 0.9), 1)} "
        f"-c idle_in_transaction_session_timeout={timeout_ms}"
    )
    given = pg_conninfo.conninfo_to_dict(conninfo)
    return {
        "autocommit": True,
        "connect_timeout": max(round(options.connect_timeout_s), 1),  # libpq: whole seconds, >= 2 in effect
        "application_name": given.get("application_name", "chat-actors"),
        "options": f"{session} {given['options']}" if given.get("options") else session,  # theirs win
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": timeout_ms,
    }


def _stale(conn: Any) -> bool:
    """True for a pooled connection that cannot be trusted: closed, broken, or with bytes
    waiting although no query is running (a FIN from a server or proxy that went away, or
    the server's message that it is terminating the session). One poll, no round trip."""
    if conn.closed or conn.broken:
        return True
    try:
        fd = conn.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


class _Closed(Exception):
    """Raised in a worker thread when the store was closed while the call queued."""


def _open_pool(conninfo: str, kwargs: dict[str, Any], options: PostgresOptions, target: str) -> ConnectionPool:
    """A fixed-size pool with every connection open (blocking; bounded by connect_timeout)."""
    pool: ConnectionPool = ConnectionPool(
        conninfo,
        kwargs=kwargs,
        min_size=options.pool,
        max_size=options.pool,
        open=False,
        name=f"chat-actors {target}",
        timeout=options.connect_timeout_s,
        # How long the pool retries a lost connection (backoff from 1 s, doubling) before it
        # gives that attempt up; the next call finding no connection starts a fresh attempt
        # at once. Short, so the retry interval stays short and a returning server is found
        # within a couple of seconds.
        reconnect_timeout=options.connect_timeout_s,
    )
    try:
        pool.open(wait=True, timeout=max(options.connect_timeout_s, 1.0) * 2)
    except BaseException:
        pool.close()
        raise
    return pool


class _Handoff:
    """Hands the pool an opening thread made to its caller, or closes it if the caller left.

    An abandoned thread's result is dropped by trio, so whichever side comes second (the
    thread with its pool, or the cancelled caller) closes the pool: never a leaked pool.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._abandoned = False

    def give(self, pool: ConnectionPool) -> ConnectionPool:
        with self._lock:
            if not self._abandoned:
                self._pool = pool
                return pool
        pool.close()
        raise Interrupted

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            pool, self._pool = self._pool, None
        if pool is not None:
            trio.lowlevel.start_thread_soon(pool.close, lambda outcome: None, name="postgres pool close")


class PostgresStore:
    """``Store`` on a PostgreSQL database (see the module docstring).

    Create it with ``await PostgresStore.open(url)`` or through ``open_store(url)``.
    """

    def __init__(self, pool: ConnectionPool, options: PostgresOptions, target: str) -> None:
        self.options = options
        self.target = target
        self._pool = pool
        self._limiter = trio.CapacityLimiter(options.pool)
        self._closed = False
        self._down = False  # the last attempt to get a connection failed
        self._committer: GroupCommitter[RoomBatch, list[AppendResult]] = GroupCommitter(arun_group=self._commit_groups)

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect, apply pending migrations (under the advisory lock), open the pool.

        errors.Unavailable if the server cannot be reached in time or the schema is newer
        than this code; ValueError for a malformed URL. Cancelling it interrupts it.
        """
        conninfo, options = parse_postgres_url(url)
        kwargs = _session_kwargs(conninfo, options)
        target = _describe(conninfo)

        handoff = _Handoff()

        def open_sync(call: PgCall) -> ConnectionPool:
            with psycopg.connect(conninfo, **kwargs) as conn:
                call.attach(conn)
                try:
                    _migrations.apply_postgres(conn)
                finally:
                    call.detach()
            return handoff.give(_open_pool(conninfo, kwargs, options, target))

        try:
            pool = await run_interruptible(open_sync, limiter=trio.CapacityLimiter(1), deadline_s=None)
        except (psycopg.Error, _migrations.MigrationError) as exc:
            raise errors.Unavailable(f"cannot open postgresql store {target}: {exc}") from exc
        except trio.Cancelled:
            handoff.abandon()
            raise
        log.info("postgresql store open at %s (pool %d, timeout %.1f s)", target, options.pool, options.timeout_s)
        return cls(pool, options, target)

    # --- plumbing ----------------------------------------------------------------------

    def _checkout(self) -> Any:
        """A connection worth using: stale ones are discarded (replaced by the pool) here.

        While the store is known to be down (the last checkout timed out, or a connection
        broke) it waits only FAST_FAIL_S: long enough for the pool to open a connection to a
        healthy server, short enough that calls answer Unavailable at once in an outage.
        """
        wait = FAST_FAIL_S if self._down else self.options.connect_timeout_s
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
            except PoolTimeout:
                self._down = True
                raise
            if not _stale(conn):
                self._down = False
                return conn
            conn.close()
            self._pool.putconn(conn)

    def _checkin(self, conn: Any) -> None:
        """Back to the pool only when idle and healthy; otherwise closed (and replaced)."""
        if conn.closed or conn.broken or conn.info.transaction_status != _IDLE:
            conn.close()
        self._pool.putconn(conn)

    def _in_thread(self, call: PgCall, body: Callable[..., T], args: tuple) -> T:
        if self._closed:
            raise _Closed
        conn = self._checkout()
        try:
            call.attach(conn)
            try:
                return body(conn, *args)
            finally:
                call.detach()
        finally:
            if conn.broken:  # the server or the network went away: fail the next calls fast
                self._down = True
            self._checkin(conn)

    async def _call(self, body: Callable[..., T], *args: Any, what: str = "read") -> T:
        """Run ``body(conn, *args)`` on a pooled connection; errors.Unavailable on any failure."""
        if self._closed:
            raise errors.Unavailable("store is closed")
        try:
            return await run_interruptible(
                lambda call: self._in_thread(call, body, args), limiter=self._limiter, deadline_s=self.options.timeout_s
            )
        except _Closed:
            raise errors.Unavailable("store is closed") from None
        except DeadlineExceeded:
            log.warning("postgresql %s %s: no answer within %.1f s", what, body.__name__, self.options.timeout_s)
            raise errors.Unavailable(f"store {what} timed out after {self.options.timeout_s} s") from None
        except (psycopg.Error, Interrupted) as exc:
            log.warning("postgresql %s %s failed: %s", what, body.__name__, exc)
            raise unavailable(exc, what) from exc

    async def _commit_groups(self, batches: list[RoomBatch]) -> list[Outcome[list[AppendResult]]]:
        """The GroupCommitter's runner (awaited shielded: bounded by the call deadline)."""
        if self._closed:
            return [errors.Unavailable("store is closed") for _ in batches]
        return await self._call(commit_group, batches, what="commit")

    @property
    def commit_groups(self) -> int:
        """Groups ``commit`` has run so far, one transaction each (for tests and metrics)."""
        return self._committer.groups

    # --- Store ----------------------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, ts: int) -> None:
        await self._call(ops.create_user, username, password_hash, ts, what="write")

    async def get_user(self, username: str) -> UserRecord | None:
        return await self._call(ops.get_user, username)

    async def create_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        return await self._call(ops.create_room, name, kind, owner, ts, True, what="write")

    async def ensure_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        existing = await self._call(ops.get_room, name)
        if existing is not None:
            return existing
        return await self._call(ops.create_room, name, kind, owner, ts, False, what="write")

    async def get_room(self, name: str) -> RoomInfo | None:
        return await self._call(ops.get_room, name)

    async def load_room(self, name: str) -> RoomSnapshot | None:
        return await self._call(ops.load_room, name)

    async def add_grant(self, room: str, user: str) -> None:
        await self._call(ops.add_grant, room, user, what="write")

    async def commit(self, batch: RoomBatch) -> list[AppendResult]:
        """Write ``batch`` in the next group commit (shared with other rooms' batches)."""
        if self._closed:
            raise errors.Unavailable("store is closed")
        return await self._committer.commit(batch)

    async def find_message(self, room: str, sender: str, client_id: str) -> AppendResult | None:
        return await self._call(ops.find, room, sender, client_id)

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._call(ops.history, room, before, after, limit)

    async def messages_between(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._call(ops.between, room, after, upto, limit)

    async def user_rooms(self, user: str, limit: int = -1) -> list[UserRoom]:
        return await self._call(ops.user_rooms, user, limit)

    async def count_user_rooms(self, user: str) -> int:
        return await self._call(ops.count_user_rooms, user)

    async def list_rooms(self, user: str) -> list[RoomListing]:
        return await self._call(ops.list_rooms, user)

    async def undelivered_direct(self, user: str, per_room_limit: int) -> list[StoredMessage]:
        if per_room_limit < 1:
            raise ValueError("per_room_limit must be >= 1")
        return await self._call(ops.undelivered, user, per_room_limit)

    async def room_members(self, room: str) -> list[str]:
        return await self._call(ops.room_members, room)

    async def ping(self) -> None:
        await self._call(ops.ping)

    async def aclose(self) -> None:
        """Stop accepting calls, wait for the calls in flight, close the pool.

        Shielded: every call is bounded by ``timeout`` (an abandoned one by the interrupt
        after it), so the wait is too, and closing connections that threads still use
        would be worse than waiting.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            borrowers = [object() for _ in range(self.options.pool)]
            for borrower in borrowers:  # every token back: no thread holds a connection
                await self._limiter.acquire_on_behalf_of(borrower)
            try:
                await trio.to_thread.run_sync(self._pool.close)
            finally:
                for borrower in borrowers:
                    self._limiter.release_on_behalf_of(borrower)
        log.info("postgresql store at %s closed", self.target)


async def open_from_url(url: str) -> PostgresStore:
    """``open_store``'s entry for ``postgresql://`` and ``postgres://`` URLs."""
    return await PostgresStore.open(url)
