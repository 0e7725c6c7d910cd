"""The PostgreSQL store's blocking bodies, other than room batches (``pg_commit.py``).

Each function takes a psycopg connection in autocommit mode and runs in a worker thread
(``postgres.py`` lends it the connection). Each is a single statement, hence one round
trip, atomic without an explicit transaction, and reading one snapshot; the exceptions
(``create_room`` on a taken name, ``ensure_room``) are commented where they occur.
"""

from __future__ import annotations

from typing import Any

from chat_actors import errors
from chat_actors.store import (
    AppendResult,
    RoomInfo,
    RoomListing,
    RoomSnapshot,
    StoredMessage,
    UserRecord,
    UserRoom,
    validate_room,
)
from chat_actors.store import pg_sql as sql
from chat_actors.store.pg_sql import text_in, text_out
from chat_actors.store.rows import MAX_INT, messages, seq_arg

__all__ = [
    "add_grant",
    "between",
    "count_user_rooms",
    "create_room",
    "create_user",
    "find",
    "get_room",
    "get_user",
    "history",
    "list_rooms",
    "load_room",
    "ping",
    "room_members",
    "undelivered",
    "user_rooms",
]

Conn = Any  # psycopg.Connection; typed loosely so this module imports without psycopg

def _room_info(row: tuple) -> RoomInfo:
    name, kind, owner, last_seq, created_ts = row
    return RoomInfo(name, kind, owner, last_seq, created_ts)


# --- writes ---------------------------------------------------------------------------------


def create_user(conn: Conn, username: str, password_hash: str, ts: int) -> None:
    if conn.execute(sql.INSERT_USER, (username, password_hash, ts)).rowcount == 0:
        raise errors.Conflict(f"user {username!r} exists")


def create_room(conn: Conn, name: str, kind: str, owner: str | None, ts: int, must_create: bool) -> RoomInfo:
    participants = validate_room(name, kind)
    dm_a, dm_b = participants if participants else (None, None)
    members = list(dict.fromkeys([*([owner] if owner is not None else []), *(participants or ())]))
    grants = [owner] if owner is not None and kind == "private" else []
    row = conn.execute(sql.CREATE_ROOM, (name, kind, owner, ts, dm_a, dm_b, members, grants)).fetchone()
    if row is not None:
        return _room_info(row)
    if must_create:
        raise errors.Conflict(f"room {name!r} exists")
    # The name is taken: ON CONFLICT waited for its creator to commit, so this (second)
    # statement sees the row. Rooms are never deleted, so it is there.
    existing = conn.execute(sql.SELECT_ROOM, (name,)).fetchone()
    if existing is None:  # pragma: no cover - only if a room were deleted underneath
        raise errors.NotFound(f"no room {name!r}")
    return _room_info(existing)


def add_grant(conn: Conn, room: str, user: str) -> None:
    if conn.execute(sql.ADD_GRANT, (room, user)).fetchone()[0] == 0:
        raise errors.NotFound(f"no room {room!r}")


# --- reads ----------------------------------------------------------------------------------


def get_user(conn: Conn, username: str) -> UserRecord | None:
    row = conn.execute(sql.SELECT_USER, (username,)).fetchone()
    return None if row is None else UserRecord(*row)


def get_room(conn: Conn, name: str) -> RoomInfo | None:
    row = conn.execute(sql.SELECT_ROOM, (name,)).fetchone()
    return None if row is None else _room_info(row)


def load_room(conn: Conn, name: str) -> RoomSnapshot | None:
    row = conn.execute(sql.LOAD_ROOM, (name,)).fetchone()
    if row is None:
        return None
    grants, members, cursor_users, cursor_seqs = row[5:]
    return RoomSnapshot(
        _room_info(row[:5]), frozenset(grants), frozenset(members), dict(zip(cursor_users, cursor_seqs))
    )


def history(
    conn: Conn, room: str, before: int | None, after: int | None, limit: int
) -> tuple[list[StoredMessage], bool]:
    """PROTOCOL section 5 paging; one row beyond the page tells whether ``more`` exist."""
    before, after = seq_arg(before), seq_arg(after)
    if after is None:
        query, args = (sql.HISTORY_LATEST, (room,)) if before is None else (sql.HISTORY_BEFORE, (room, before))
    elif before is None:
        query, args = sql.HISTORY_AFTER, (room, after)
    else:
        query, args = sql.HISTORY_BETWEEN, (room, after, before)
    rows = conn.execute(query, (*args, min(limit, MAX_INT - 1) + 1)).fetchall()
    more = len(rows) > limit
    del rows[limit:]
    if after is None:
        rows.reverse()  # fetched newest first
    return messages(room, rows, text_out), more


def between(conn: Conn, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
    args = (room, seq_arg(after), seq_arg(upto), min(limit, MAX_INT))
    return messages(room, conn.execute(sql.MESSAGES_UPTO, args).fetchall(), text_out)


def find(conn: Conn, room: str, sender: str, client_id: str) -> AppendResult | None:
    row = conn.execute(sql.FIND_MESSAGE, (room, sender, text_in(client_id))).fetchone()
    return None if row is None else AppendResult(row[0], row[1], True)


def user_rooms(conn: Conn, user: str, limit: int) -> list[UserRoom]:
    bound = None if limit < 0 else min(limit, MAX_INT)  # LIMIT NULL = no limit
    return [UserRoom(*row) for row in conn.execute(sql.USER_ROOMS, {"user": user, "limit": bound})]


def count_user_rooms(conn: Conn, user: str) -> int:
    return conn.execute(sql.COUNT_USER_ROOMS, {"user": user}).fetchone()[0]


def list_rooms(conn: Conn, user: str) -> list[RoomListing]:
    return [RoomListing(_room_info(row[:5]), row[5]) for row in conn.execute(sql.LIST_ROOMS, {"user": user})]


def undelivered(conn: Conn, user: str, per_room_limit: int) -> list[StoredMessage]:
    rows = conn.execute(sql.UNDELIVERED_DIRECT, {"user": user, "limit": min(per_room_limit, MAX_INT)}).fetchall()
    out: list[StoredMessage] = []
    for name, *message in rows:
        out.extend(messages(name, [tuple(message)], text_out))
    return out


def room_members(conn: Conn, room: str) -> list[str]:
    return [u for (u,) in conn.execute(sql.SELECT_MEMBERS, (room,))]


def ping(conn: Conn) -> None:
    conn.execute(sql.PING).fetchall()
