"""SQL of the PostgreSQL store, and the encoding of values on their way in and out.

Kept apart from ``postgres.py`` so the statements can be read (and reviewed against the
indexes of ``migrations/postgres/0001_initial.sql``) in one place. Every statement is a
single round trip; a room batch is one pipeline (see ``pg_commit.py``).

**The seq transaction.** A room batch runs, inside ``BEGIN ... COMMIT``:

1. ``LOCK_ROOM``: ``SELECT ... FOR NO KEY UPDATE`` on the room row. Every writer of the room,
   on any node, queues here, so last_seq is read and advanced by one transaction at a time.
   ``NO KEY UPDATE`` (not ``UPDATE``) still lets other transactions insert rows that merely
   reference the room (members, grants): their foreign-key check takes ``KEY SHARE``, which
   does not conflict with it. The same statement records the locked room's id in the
   transaction-local setting ``chat_actors.room_id`` ('' when there is no such room), and
   every later statement of the batch finds its room through that setting rather than by
   name: a room created by another node between the two statements cannot be written
   without its lock.
2. ``APPEND``: a *new* statement, so under READ COMMITTED its snapshot is taken after the
   lock was granted and sees every message the previous lock holder committed. It finds
   which (sender, client_id) pairs already exist (retries: their original seq/ts come back,
   no seq is used), numbers the first occurrence of every other key last_seq+1, +2, ... in
   batch order, inserts them, advances last_seq and the senders' cursors, and returns one
   row per distinct key. Everything is data-modifying CTEs over ``unnest`` of the batch's
   columns: one statement whatever the batch size.
3. ``JOIN_MEMBERS`` / ``LEAVE_MEMBERS`` / ``MOVE_CURSORS`` when the batch has any (separate
   statements, in this order, so a leave sees the join before it and a cursor the new
   last_seq).

**Text.** PostgreSQL ``text`` cannot hold NUL, which JSON (and so a client's message text or
id) can. ``text_in`` escapes it reversibly with U+0001 (``\\x01`` -> ``\\x01 1``, NUL ->
``\\x01 0``); ``text_out`` undoes it. Strings without either character, i.e. all real ones,
pass through untouched (one C-level scan each). ``meta`` is stored as its JSON text, where
orjson already writes NUL as ``\\u0000``.
"""

from __future__ import annotations

import re

__all__ = ["text_in", "text_out"]

_ESC = "\x01"
_UNESCAPE = re.compile("\x01([01])")


def text_in(value: str) -> str:
    """A client string as stored: NUL and U+0001 escaped (see the module docstring)."""
    if "\x00" not in value and _ESC not in value:
        return value
    return value.replace(_ESC, "\x011").replace("\x00", "\x010")


def _unescape(match: re.Match[str]) -> str:
    return "\x00" if match.group(1) == "0" else _ESC


def text_out(value: str) -> str:
    """The client's string back from its stored form (the inverse of ``text_in``)."""
    if _ESC not in value:
        return value
    return _UNESCAPE.sub(_unescape, value)


# --- room batches -------------------------------------------------------------------------

ROOM_VAR = "chat_actors.room_id"
_ROOM_ID = f"nullif(current_setting('{ROOM_VAR}', true), '')::bigint"

LOCK_ROOM = f"""
SELECT set_config('{ROOM_VAR}', coalesce(max(r.id)::text, ''), true) <> ''
FROM (SELECT id FROM rooms WHERE name = %s FOR NO KEY UPDATE) AS r
"""

APPEND = f"""
WITH input AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])
        WITH ORDINALITY AS i (sender, client_id, text, meta, ts, ord)
), room AS (
    SELECT id, last_seq FROM rooms WHERE id = {_ROOM_ID}
), firsts AS (
    SELECT DISTINCT ON (sender, client_id) * FROM input ORDER BY sender, client_id, ord
), old AS (
    SELECT f.sender, f.client_id, m.seq, m.ts
    FROM firsts AS f CROSS JOIN LATERAL (
        SELECT seq, ts FROM messages
        WHERE room_id = (SELECT id FROM room) AND sender = f.sender AND client_id = f.client_id
        LIMIT 1
    ) AS m
), fresh AS (
    SELECT f.*, (SELECT last_seq FROM room) + row_number() OVER (ORDER BY f.ord) AS seq
    FROM firsts AS f
    WHERE EXISTS (SELECT FROM room)
      AND NOT EXISTS (SELECT FROM old WHERE old.sender = f.sender AND old.client_id = f.client_id)
), stored AS (
    INSERT INTO messages (room_id, seq, client_id, sender, text, meta, ts)
    SELECT (SELECT id FROM room), seq, client_id, sender, text, meta::json, ts FROM fresh
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + (SELECT count(*) FROM fresh)
    WHERE id = (SELECT id FROM room) AND EXISTS (SELECT FROM fresh)
), sender_cursors AS (
    INSERT INTO cursors (room_id, username, seq)
    SELECT (SELECT id FROM room), sender, max(seq) FROM fresh GROUP BY sender
    ON CONFLICT (room_id, username) DO UPDATE SET seq = excluded.seq WHERE cursors.seq < excluded.seq
)
SELECT sender, client_id, seq, ts, false FROM old
UNION ALL
SELECT sender, client_id, seq, ts, true FROM fresh
"""

JOIN_MEMBERS = f"""
INSERT INTO members (room_id, username)
SELECT {_ROOM_ID}, u FROM unnest(%s::text[]) AS u WHERE {_ROOM_ID} IS NOT NULL
ON CONFLICT DO NOTHING
"""
LEAVE_MEMBERS = f"DELETE FROM members WHERE room_id = {_ROOM_ID} AND username = ANY(%s::text[])"
MOVE_CURSORS = f"""
INSERT INTO cursors (room_id, username, seq)
SELECT r.id, c.username, least(c.seq, r.last_seq)
FROM rooms AS r, unnest(%s::text[], %s::bigint[]) AS c (username, seq)
WHERE r.id = {_ROOM_ID} AND least(c.seq, r.last_seq) > 0
ON CONFLICT (room_id, username) DO UPDATE SET seq = excluded.seq WHERE cursors.seq < excluded.seq
"""

# --- other writes (single statements: atomic in autocommit) -------------------------------

INSERT_USER = (
    "INSERT INTO users (username, password_hash, created_ts) VALUES (%s, %s, %s) "
    "ON CONFLICT (username) DO NOTHING"
)
_ROOM_COLS = "r.name, r.kind, r.owner, r.last_seq, r.created_ts"
# The room, its owner's membership (and grant, for a private room) and a direct room's two
# members in one statement; nothing at all when the name is taken.
CREATE_ROOM = """
WITH r AS (
    INSERT INTO rooms (name, kind, owner, last_seq, created_ts, dm_a, dm_b)
    VALUES (%s, %s, %s, 0, %s, %s, %s)
    ON CONFLICT (name) DO NOTHING
    RETURNING id, name, kind, owner, last_seq, created_ts
), m AS (
    INSERT INTO members (room_id, username) SELECT r.id, u FROM r, unnest(%s::text[]) AS u
    ON CONFLICT DO NOTHING
), g AS (
    INSERT INTO grants (room_id, username) SELECT r.id, u FROM r, unnest(%s::text[]) AS u
    ON CONFLICT DO NOTHING
)
SELECT name, kind, owner, last_seq, created_ts FROM r
"""
ADD_GRANT = """
WITH r AS (SELECT id FROM rooms WHERE name = %s),
g AS (INSERT INTO grants (room_id, username) SELECT id, %s FROM r ON CONFLICT DO NOTHING)
SELECT count(*) FROM r
"""

# --- reads (single statements: each sees one snapshot) ------------------------------------

SELECT_USER = "SELECT username, password_hash, created_ts FROM users WHERE username = %s"
SELECT_ROOM = f"SELECT {_ROOM_COLS} FROM rooms AS r WHERE r.name = %s"
LOAD_ROOM = f"""
SELECT {_ROOM_COLS},
    ARRAY(SELECT username FROM grants WHERE room_id = r.id),
    ARRAY(SELECT username FROM members WHERE room_id = r.id),
    ARRAY(SELECT username FROM cursors WHERE room_id = r.id ORDER BY username),
    ARRAY(SELECT seq FROM cursors WHERE room_id = r.id ORDER BY username)
FROM rooms AS r WHERE r.name = %s
"""
_MSG_COLS = "m.seq, m.client_id, m.sender, m.text, m.meta::text, m.ts"
_IN_ROOM = "m.room_id = (SELECT id FROM rooms WHERE name = %s)"


def _range(where: str, order: str = "ASC") -> str:
    """A page of one room's messages: served by PRIMARY KEY (room_id, seq) either way."""
    return f"SELECT {_MSG_COLS} FROM messages AS m WHERE {_IN_ROOM}{where} ORDER BY m.seq {order} LIMIT %s"


HISTORY_LATEST = _range("", "DESC")
HISTORY_BEFORE = _range(" AND m.seq < %s", "DESC")
HISTORY_AFTER = _range(" AND m.seq > %s")
HISTORY_BETWEEN = _range(" AND m.seq > %s AND m.seq < %s")
MESSAGES_UPTO = _range(" AND m.seq > %s AND m.seq <= %s")
FIND_MESSAGE = f"SELECT m.seq, m.ts FROM messages AS m WHERE {_IN_ROOM} AND m.sender = %s AND m.client_id = %s"
SELECT_MEMBERS = (
    "SELECT username FROM members WHERE room_id = (SELECT id FROM rooms WHERE name = %s) ORDER BY username"
)
_DM_ROOM_IDS = "SELECT id FROM rooms WHERE dm_a = %(user)s UNION SELECT id FROM rooms WHERE dm_b = %(user)s"
_USER_ROOM_IDS = f"SELECT room_id FROM members WHERE username = %(user)s UNION {_DM_ROOM_IDS}"
USER_ROOMS = f"""
SELECT r.name, r.last_seq, coalesce(c.seq, 0)
FROM rooms AS r LEFT JOIN cursors AS c ON c.room_id = r.id AND c.username = %(user)s
WHERE r.id IN ({_USER_ROOM_IDS})
ORDER BY r.name
LIMIT %(limit)s
"""
COUNT_USER_ROOMS = f"SELECT count(*) FROM ({_USER_ROOM_IDS}) AS u"
LIST_ROOMS = f"""
SELECT {_ROOM_COLS}, (SELECT count(*) FROM members AS m WHERE m.room_id = r.id)
FROM rooms AS r
WHERE r.id IN (
    SELECT id FROM rooms WHERE kind = 'public'
    UNION SELECT id FROM rooms WHERE owner = %(user)s AND kind = 'private'
    UNION SELECT g.room_id FROM grants AS g JOIN rooms AS p ON p.id = g.room_id
          WHERE g.username = %(user)s AND p.kind = 'private'
    UNION {_DM_ROOM_IDS})
ORDER BY r.name
"""
# The oldest unread of every direct room of the user, one statement (one snapshot).
UNDELIVERED_DIRECT = f"""
SELECT r.name, {_MSG_COLS}
FROM rooms AS r
LEFT JOIN cursors AS c ON c.room_id = r.id AND c.username = %(user)s
CROSS JOIN LATERAL (
    SELECT * FROM messages AS m
    WHERE m.room_id = r.id AND m.seq > coalesce(c.seq, 0)
    ORDER BY m.seq LIMIT %(limit)s
) AS m
WHERE r.id IN ({_DM_ROOM_IDS}) AND r.last_seq > coalesce(c.seq, 0)
ORDER BY r.name, m.seq
"""
PING = "SELECT max(version) FROM schema_migrations"
