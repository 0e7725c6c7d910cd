"""Row helpers the SQL backends share: cursor binding and turning rows into records.

SQLite and PostgreSQL both bind 64-bit integers and keep ``meta`` as JSON text, so the
clamping of client cursors and the row -> ``StoredMessage`` mapping are one piece of code.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from chat_actors.store import StoredMessage

__all__ = ["MAX_INT", "messages", "meta_out", "seq_arg"]

#: the largest integer both SQL backends bind
MAX_INT = 2**63 - 1


def seq_arg(seq: int | None) -> int | None:
    """Clients may send any non-negative integer as a cursor; the databases bind 64-bit ones."""
    return None if seq is None else max(min(seq, MAX_INT), -MAX_INT)


def meta_out(text: str | None) -> dict | None:
    return None if text is None else orjson.loads(text)


def messages(room: str, rows: list[tuple], text_out: Callable[[str], str] | None = None) -> list[StoredMessage]:
    """Rows of (seq, client_id, sender, text, meta, ts); ``text_out`` undoes a backend's text
    encoding (PostgreSQL's, ``pg_sql.text_out``); SQLite stores text as it is."""
    if text_out is None:
        return [StoredMessage(room, seq, client_id, sender, text, meta_out(meta), ts)
                for seq, client_id, sender, text, meta, ts in rows]
    return [StoredMessage(room, seq, text_out(client_id), sender, text_out(text), meta_out(meta), ts)
            for seq, client_id, sender, text, meta, ts in rows]
