"""Durable state of the chat server: users, rooms, messages, memberships, grants, read cursors.

This module is the interface every backend implements (``Store``), the records that cross it,
and ``open_store(url)``, the one place that maps a configuration URL to an implementation.
Room actors call ``commit`` once per drained inbox (the hot path) and everything else rarely,
so the contract is shaped around that: one call, one transaction, results aligned with the
input, and failures that say plainly whether anything was kept (it never is on error).

Backends: ``memory://`` (``MemoryStore``, tests), ``sqlite:///rel/path.db`` /
``sqlite:////abs/path.db`` (``SqliteStore``, the embedded default) and
``postgresql://user@host/db`` (``PostgresStore``, the cluster store; ``postgres://`` too).
``open_store`` only dispatches on the scheme; each backend module parses its own URL in
``open_from_url``. Every backend runs the conformance suite in ``tests/store``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from typing import Literal, Protocol, runtime_checkable

import attrs

__all__ = [
    "ROOM_KINDS",
    "AppendResult",
    "NewMessage",
    "RoomBatch",
    "RoomInfo",
    "RoomKind",
    "RoomListing",
    "RoomSnapshot",
    "Store",
    "StoredMessage",
    "UserRecord",
    "UserRoom",
    "direct_participants",
    "open_store",
    "parse_sqlite_url",
    "validate_room",
]

RoomKind = Literal["public", "private", "direct"]
ROOM_KINDS: frozenset[str] = frozenset({"public", "private", "direct"})


@attrs.frozen
class RoomInfo:
    """A room row. ``last_seq`` is the seq of its newest message (0 while empty)."""

    name: str
    kind: RoomKind
    owner: str | None
    last_seq: int
    created_ts: int

    @property
    def private(self) -> bool:
        return self.kind == "private"


@attrs.frozen
class UserRecord:
    username: str
    password_hash: str
    created_ts: int


@attrs.frozen
class NewMessage:
    """A message to store; ``client_id`` is the sender's id used for idempotent retries."""

    sender: str
    client_id: str
    text: str
    meta: dict | None
    ts: int


@attrs.frozen
class AppendResult:
    """Where a message landed. ``duplicate`` = it was stored earlier; seq/ts are the original's."""

    seq: int
    ts: int
    duplicate: bool


@attrs.frozen
class StoredMessage:
    room: str
    seq: int
    client_id: str
    sender: str
    text: str
    meta: dict | None
    ts: int


@attrs.frozen
class RoomBatch:
    """Everything a room actor drained from its inbox, written in one transaction.

    Sequences are converted to tuples so a caller may pass lists.
    """

    room: str
    messages: tuple[NewMessage, ...] = attrs.field(default=(), converter=tuple)
    joins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    leaves: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    cursors: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class RoomSnapshot:
    """What a room actor needs at spawn: the row, who may enter, who joined, read cursors."""

    info: RoomInfo
    grants: frozenset[str]
    members: frozenset[str]
    cursors: Mapping[str, int]


@attrs.frozen
class RoomListing:
    info: RoomInfo
    members: int


@attrs.frozen
class UserRoom:
    """One entry of the welcome ``rooms`` list: the room's last seq and the user's cursor."""

    room: str
    seq: int
    read: int


def direct_participants(name: str) -> tuple[str, str] | None:
    """``("a", "b")`` for ``dm:<a>:<b>`` with a < b (code points), else None.

    Usernames cannot contain ``:``, so a split is exact. The store keeps its own parser (rather
    than importing the codec) so that it depends on nothing above it.
    """
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != "dm":
        return None
    a, b = parts[1], parts[2]
    if not a or not b or not a < b:
        return None
    return a, b


def validate_room(name: str, kind: str) -> tuple[str, str] | None:
    """Check ``kind`` and the dm naming rule; returns the participants of a direct room.

    Raises ValueError: callers validate user input before it reaches the store, so a bad
    kind here is a programming error, not a client error.
    """
    if kind not in ROOM_KINDS:
        raise ValueError(f"unknown room kind {kind!r}")
    participants = direct_participants(name)
    if kind == "direct" and participants is None:
        raise ValueError(f"direct room name must be dm:<a>:<b> with a < b, got {name!r}")
    if kind != "direct" and name.startswith("dm:"):
        raise ValueError(f"only direct rooms may be named dm:..., got {name!r}")
    return participants


@runtime_checkable
class Store(Protocol):
    """The durable state behind the room actors and the HTTP API.

    Guarantees every implementation keeps (the conformance suite checks them):

    * **Order**: in each room ``seq`` starts at 1 and grows by exactly 1 per stored message,
      across batches and across restarts; ``rooms.last_seq`` always equals the highest seq.
    * **Idempotency**: (room, sender, client_id) identifies a message. Committing it again
      returns the original ``(seq, ts)`` with ``duplicate=True`` and stores nothing, also when
      the repeat is inside the same batch.
    * **Atomic batches**: ``commit`` is one transaction. It either keeps all of the batch or
      none of it; on failure it raises ``errors.Unavailable`` and the caller may retry the
      same batch (idempotency makes the retry safe even if the failure hid a success).
    * **Durability**: when ``commit`` returns, the batch survives a crash of the process
      (``kill -9``) and a restart.
    * **Errors**: ``errors.Unavailable`` = the backend did not answer or the store is closed;
      nothing was changed by that call. ``errors.Conflict`` = ``create_user``/``create_room``
      on a name that exists. ``errors.NotFound`` = ``commit``/``add_grant`` on a room that
      does not exist (create rooms first with ``ensure_room``/``create_room``). ``ValueError``
      = a programming error (unknown room kind, bad dm name, ``limit < 1``).
    * **Cursors** only move forward and never past the room's ``last_seq``.
    * Lists of rooms are ordered by room name, member lists by username, messages by seq.

    Cancellation: a write cancelled before it reaches the backend did nothing; once it has, it
    is never abandoned half way (it commits or rolls back whole). A `commit` whose group is
    already running when its caller is cancelled still commits, and the caller sees
    Cancelled instead of the results (clients retry with the same id; dedup answers the
    original ack). A cancelled read returns at once.
    """

    async def create_user(self, username: str, password_hash: str, ts: int) -> None:
        """Add an account. errors.Conflict if the (case-sensitive) name is taken."""
        ...

    async def get_user(self, username: str) -> UserRecord | None: ...

    async def create_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        """Create a room; errors.Conflict if it exists.

        The owner (if any) becomes a member, and of a private room also holds a grant.
        A direct room must be named ``dm:<a>:<b>`` (a < b); its participants are stored.
        """
        ...

    async def ensure_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        """Get the room, or create it as ``create_room`` would. An existing room is returned
        unchanged (its kind and owner are not compared with the arguments)."""
        ...

    async def get_room(self, name: str) -> RoomInfo | None: ...

    async def load_room(self, name: str) -> RoomSnapshot | None:
        """Everything a room actor needs at spawn, read in one consistent snapshot."""
        ...

    async def add_grant(self, room: str, user: str) -> None:
        """Let ``user`` into a private room (idempotent). errors.NotFound if no such room.
        A grant does not make the user a member: the room appears in ``user_rooms`` once
        they join it. Grants on non-private rooms are kept but give nothing."""
        ...

    async def commit(self, batch: RoomBatch) -> list[AppendResult]:
        """Write one room actor batch in ONE transaction; results align with batch.messages.

        For each message in order: if (room, sender, client_id) exists (stored earlier or
        earlier in this batch) -> the original (seq, ts, duplicate=True); else seq =
        last_seq + 1, the message is stored, rooms.last_seq follows, and the sender's read
        cursor becomes max(cursor, seq). Then ``joins`` add membership rows (idempotent),
        ``leaves`` delete them (joins are applied first, so a user in both ends up not a
        member), ``cursors`` set cursor := max(cursor, min(seq, last_seq)).
        errors.NotFound if the room does not exist; any backend failure -> errors.Unavailable
        and nothing of the batch is kept.
        """
        ...

    async def find_message(self, room: str, sender: str, client_id: str) -> AppendResult | None:
        """The stored (seq, ts) of a client message, as ``duplicate=True``, or None."""
        ...

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """PROTOCOL section 5 ``history``: ascending seq, cursors exclusive.

        No cursor or only ``before``: the newest ``limit`` below ``before``; more = older exist.
        ``after``: the oldest ``limit`` above it (and below ``before`` if given); more = more
        exist in that range beyond this page. An unknown room is an empty page.
        """
        ...

    async def messages_between(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        """Messages with after < seq <= upto, ascending, at most ``limit`` (the oldest)."""
        ...

    async def user_rooms(self, user: str, limit: int = -1) -> list[UserRoom]:
        """Rooms the user is a member of plus all their direct rooms (joined or not), by name,
        at most `limit` of them (-1: all); seq = room last_seq, read = the user's cursor (0 if none)."""
        ...

    async def count_user_rooms(self, user: str) -> int:
        """How many rooms `user_rooms` would list without a limit (the per-user room cap)."""
        ...

    async def list_rooms(self, user: str) -> list[RoomListing]:
        """Public rooms, private rooms the user owns or has a grant on, the user's direct
        rooms; ``members`` = number of membership rows."""
        ...

    async def undelivered_direct(self, user: str, per_room_limit: int) -> list[StoredMessage]:
        """For each direct room of the user (by name): the oldest ``per_room_limit`` messages
        with seq > the user's cursor there, in seq order."""
        ...

    async def room_members(self, room: str) -> list[str]: ...

    async def ping(self) -> None:
        """Readiness probe: returns when the backend answers, else errors.Unavailable."""
        ...

    async def aclose(self) -> None:
        """Wait for in-flight writes, release the backend; later calls raise Unavailable.
        Idempotent."""
        ...


#: URL scheme -> the backend module; each has ``async def open_from_url(url) -> Store`` and
#: is imported only when used (psycopg is not loaded for a SQLite server, for instance).
_BACKENDS: dict[str, str] = {
    "memory": "chat_actors.store.memory",
    "sqlite": "chat_actors.store.sqlite",
    "postgresql": "chat_actors.store.postgres",
    "postgres": "chat_actors.store.postgres",
}


async def _connect(url: str) -> Store:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    module_name = _BACKENDS.get(scheme)
    if module_name is None:
        raise ValueError(
            f"unsupported store URL scheme {scheme or url!r} "
            "(expected memory://, sqlite:///path or postgresql://host/db)"
        )
    backend = importlib.import_module(module_name)
    return await backend.open_from_url(url)


def __getattr__(name: str) -> object:
    """``parse_sqlite_url`` lives in the SQLite backend; imported from here on first use."""
    if name == "parse_sqlite_url":
        from chat_actors.store.sqlite import parse_sqlite_url

        return parse_sqlite_url
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    """Open the store named by ``url`` and close it on exit (after in-flight writes finish).

    Raises ValueError for a malformed URL and errors.Unavailable when the backend cannot be
    opened (unreadable file, unreachable server, newer schema than this code knows, ...).
    """
    store = await _connect(url)
    try:
        yield store
    finally:
        await store.aclose()
