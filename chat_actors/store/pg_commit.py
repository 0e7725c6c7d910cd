"""Room batches on PostgreSQL: the seq transaction (``pg_sql.py``) for one or several rooms.

Round trips: the whole transaction, ``BEGIN``, each room's statements and ``COMMIT``, goes
out as one psycopg pipeline, so a batch (or a group of batches) costs one network round
trip and one WAL flush however many messages, joins and cursors it holds.

Several rooms in one transaction (a group commit) take their room locks in room-name
order, the one global order every node uses, so two nodes committing overlapping sets of
rooms queue behind each other instead of deadlocking. Each batch must still fail alone,
as in SQLite. In pipeline mode an error makes the server skip everything up to the end of
the pipeline, so savepoints cannot isolate a batch within one pipeline; the group goes
out optimistically in one pipeline and only if it fails (an injected trigger, a constraint:
rare) is it rolled back and redone batch by batch, each inside its own SAVEPOINT with a
round trip of its own, so the failing batch is rolled back alone and gets its error while
the others commit. A connection-level failure fails the whole group (nothing is kept).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import orjson

from chat_actors import errors
from chat_actors.store import AppendResult, RoomBatch
from chat_actors.store import pg_sql as sql
from chat_actors.store.group_commit import Outcome
from chat_actors.store.pg_sql import text_in
from chat_actors.store.rows import seq_arg

__all__ = ["commit_group", "unavailable"]

log = logging.getLogger(__name__)

Conn = Any  # psycopg.Connection (autocommit=True)


def unavailable(exc: BaseException, what: str = "write") -> errors.Unavailable:
    """The caller's view of a backend failure: nothing was kept, it may retry."""
    failure = errors.Unavailable(f"store {what} failed: {type(exc).__name__}: {exc}".strip())
    failure.__cause__ = exc  # as ``raise ... from exc`` would
    return failure


@attrs.frozen
class _Prepared:
    """A batch encoded for the wire. Encoding first means the only step that can fail in
    Python (a meta that is not JSON-serialisable) fails before anything is sent."""

    batch: RoomBatch
    keys: tuple[tuple[str, str], ...]  # (sender, stored client_id) per message
    append: tuple | None
    joins: list[str]
    leaves: list[str]
    cursors: tuple[list[str], list[int]] | None


def _prepare(batch: RoomBatch) -> _Prepared:
    msgs = batch.messages
    keys = tuple((m.sender, text_in(m.client_id)) for m in msgs)
    append = None
    if msgs:
        metas = [None if m.meta is None else orjson.dumps(m.meta).decode() for m in msgs]
        append = (
            [k[0] for k in keys],
            [k[1] for k in keys],
            [text_in(m.text) for m in msgs],
            metas,
            [m.ts for m in msgs],
        )
    best: dict[str, int] = {}
    for user, seq in batch.cursors:  # one row per user: ON CONFLICT may touch a row only once
        best[user] = max(best.get(user, seq), seq)
    cursors = (list(best), [seq_arg(s) for s in best.values()]) if best else None
    return _Prepared(batch, keys, append, list(dict.fromkeys(batch.joins)), list(batch.leaves), cursors)


def _queue(conn: Conn, prep: _Prepared) -> tuple[Any, Any]:
    """Send one batch's statements (in pipeline mode: queued, no round trip yet)."""
    locked = conn.execute(sql.LOCK_ROOM, (prep.batch.room,))
    appended = conn.execute(sql.APPEND, prep.append) if prep.append is not None else None
    if prep.joins:
        conn.execute(sql.JOIN_MEMBERS, (prep.joins,))
    if prep.leaves:
        conn.execute(sql.LEAVE_MEMBERS, (prep.leaves,))
    if prep.cursors is not None:
        conn.execute(sql.MOVE_CURSORS, prep.cursors)
    return locked, appended


def _results(prep: _Prepared, locked: Any, appended: Any) -> list[AppendResult]:
    """Results aligned with the batch's messages; NotFound if the room row was not there
    (then every statement of the batch matched nothing: nothing was written)."""
    (found,) = locked.fetchone()
    if not found:
        raise errors.NotFound(f"no room {prep.batch.room!r}")
    if appended is None:
        return []
    stored = {(sender, client_id): (seq, ts, fresh) for sender, client_id, seq, ts, fresh in appended.fetchall()}
    results: list[AppendResult] = []
    seen: set[tuple[str, str]] = set()
    for key in prep.keys:
        seq, ts, fresh = stored[key]
        results.append(AppendResult(seq, ts, not fresh or key in seen))  # a repeat inside the batch
        seen.add(key)
    return results


def rollback_quietly(conn: Conn) -> None:
    """Leave the connection outside any transaction if possible; the caller discards it
    when this fails (its state is then unknown)."""
    try:
        if not conn.broken and conn.info.transaction_status != 0:  # 0 = IDLE
            conn.execute("ROLLBACK")
    except Exception as exc:  # any failure here: the connection will be discarded
        log.info("rollback failed: %s", exc)


def _one_pipeline(conn: Conn, preps: list[tuple[int, _Prepared]]) -> list[tuple[int, Any, Any]]:
    queued: list[tuple[int, Any, Any]] = []
    with conn.pipeline():
        conn.execute("BEGIN")
        for index, prep in preps:
            queued.append((index, *_queue(conn, prep)))
        conn.execute("COMMIT")
    return queued


def _batch_outcome(prep: _Prepared, locked: Any, appended: Any) -> Outcome[list[AppendResult]]:
    try:
        return _results(prep, locked, appended)
    except errors.NotFound as exc:
        return exc


def commit_group(conn: Conn, batches: list[RoomBatch]) -> list[Outcome[list[AppendResult]]]:
    """Commit several rooms' batches in one transaction, each failing or succeeding alone.

    Returns one outcome per batch (results, or the exception its caller should see). Only
    errors that are not the database's (a programming error in this module) propagate.
    """
    import psycopg  # lazily, like the rest of the PostgreSQL backend

    outcomes: list[Outcome[list[AppendResult]] | None] = [None] * len(batches)
    preps: list[tuple[int, _Prepared]] = []
    for index in sorted(range(len(batches)), key=lambda i: batches[i].room):  # the lock order
        try:
            preps.append((index, _prepare(batches[index])))
        except Exception as exc:  # not JSON-serialisable meta: this batch alone fails
            outcomes[index] = exc
    if preps:
        by_index = dict(preps)
        try:
            for index, locked, appended in _one_pipeline(conn, preps):
                outcomes[index] = _batch_outcome(by_index[index], locked, appended)
        except psycopg.Error as exc:
            rollback_quietly(conn)
            if len(preps) == 1 or conn.broken:
                log.warning("postgres commit of %d batch(es) failed: %s", len(preps), exc)
                for index, _ in preps:
                    outcomes[index] = unavailable(exc)
            else:
                _one_by_one(conn, preps, outcomes)
    return outcomes  # type: ignore[return-value]


def _one_by_one(
    conn: Conn, preps: list[tuple[int, _Prepared]], outcomes: list[Outcome[list[AppendResult]] | None]
) -> None:
    """The slow path after a failed group: each batch in a savepoint, its own round trip."""
    import psycopg

    done: dict[int, Outcome[list[AppendResult]]] = {}
    try:
        conn.execute("BEGIN")
        for index, prep in preps:
            try:
                with conn.pipeline():
                    conn.execute("SAVEPOINT batch")
                    locked, appended = _queue(conn, prep)
                    conn.execute("RELEASE SAVEPOINT batch")
                done[index] = _batch_outcome(prep, locked, appended)
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                conn.execute("ROLLBACK TO SAVEPOINT batch")
                conn.execute("RELEASE SAVEPOINT batch")
                log.warning("postgres commit of room %s failed: %s", prep.batch.room, exc)
                done[index] = unavailable(exc)
        conn.execute("COMMIT")
    except psycopg.Error as exc:
        rollback_quietly(conn)
        log.warning("postgres commit of a group of %d batches failed: %s", len(preps), exc)
        for index, _ in preps:
            outcomes[index] = unavailable(exc)
        return
    for index, outcome in done.items():
        outcomes[index] = outcome
