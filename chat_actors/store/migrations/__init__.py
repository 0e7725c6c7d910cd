"""Numbered schema migrations for the SQL stores.

SQLite's files are in this package, PostgreSQL's in ``migrations/postgres`` (same numbers,
same logical schema, each in its own dialect). Each change to the schema is a new file ``NNNN_name.sql`` in this package (never an edit of
an applied one), so an existing database moves forward by replaying only what it lacks.
The applied versions are recorded in ``schema_migrations (version, name, applied_ts)``.
All pending migrations run in one transaction: a database is either at the old version or
fully at the new one, and two processes opening the same file at once cannot both apply
them (``BEGIN IMMEDIATE`` serializes them and the second one re-reads the applied set).
A migration that must change ``PRAGMA foreign_keys`` (table rebuilds) cannot run inside
that transaction; such a migration needs its own step here when it is written.

On PostgreSQL (``apply_postgres``) DDL is transactional too, and several nodes may start at
once against one database: the migrating transaction first takes a transaction-level
advisory lock (``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``), so they queue; each reads the
applied set only once it holds the lock, and the lock goes with COMMIT or ROLLBACK (nothing
to release by hand, nothing left behind by a node that dies mid-migration).
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import sqlite3
import time
from typing import Any

import attrs

__all__ = [
    "MIGRATION_LOCK_KEY",
    "POSTGRES_PACKAGE",
    "Migration",
    "MigrationError",
    "apply_postgres",
    "apply_sqlite",
    "load_migrations",
    "split_statements",
]

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ts INTEGER NOT NULL
)
"""


#: The PostgreSQL migrations' package (data files beside this one).
POSTGRES_PACKAGE = __name__ + ".postgres"
#: The advisory lock key that serializes migrations on one PostgreSQL database (advisory
#: locks are per database): "chatmigr" as a big-endian 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"chatmigr", "big")
#: How long a starting node waits for the lock (or a migration for its table locks) before
#: it gives up: another node is migrating a large table, or a long transaction is in the way.
POSTGRES_LOCK_TIMEOUT = "60s"

_CREATE_TABLE_PG = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_ts bigint NOT NULL
)
"""


class MigrationError(Exception):
    """The migration files or the database's recorded versions are inconsistent."""


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str = __name__) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``package``, in version order (package data, so it
    works from a wheel or a zip as well as from a checkout)."""
    found: dict[int, Migration] = {}
    for entry in importlib.resources.files(package).iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None or not entry.is_file():
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version:04d} in {package}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (``sqlite3.complete_statement`` understands
    quotes, comments and trigger bodies), so they can run inside our own transaction:
    ``executescript`` would commit it first."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = "\n".join(ln for ln in buffer.splitlines() if not ln.strip().startswith("--")).strip()
    if rest:
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {rest[:80]!r}")
    return statements


def apply_sqlite(
    conn: sqlite3.Connection,
    migrations: list[Migration] | None = None,
    *,
    now_ms: int | None = None,
) -> list[int]:
    """Apply the migrations the database lacks; returns the versions applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Raises MigrationError
    when the database records a version this code does not know (it was written by a newer
    release: running old code on it could corrupt it).
    """
    if migrations is None:
        migrations = load_migrations()
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    known = {m.version for m in migrations}
    conn.execute(_CREATE_TABLE)
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        _check_known(applied, known)
        done = _apply_missing(conn, migrations, applied, now_ms, split=True, mark="?")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    for version in done:
        log.info("applied schema migration %04d", version)
    return done


def _check_known(applied: set[int], known: set[int]) -> None:
    unknown = applied - known
    if unknown:
        raise MigrationError(
            f"database has schema version(s) {sorted(unknown)} unknown to this release "
            f"(knows {sorted(known)}); upgrade chat-actors"
        )


def _apply_missing(
    conn: Any, migrations: list[Migration], applied: set[int], now_ms: int, *, split: bool, mark: str
) -> list[int]:
    """Run, in order, each migration not in ``applied`` and record it, inside the caller's
    transaction. SQLite's driver runs one statement per call (``split``); ``mark`` is the
    driver's parameter placeholder."""
    record = f"INSERT INTO schema_migrations (version, name, applied_ts) VALUES ({mark}, {mark}, {mark})"
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for statement in split_statements(migration.sql) if split else [migration.sql]:
            conn.execute(statement)
        conn.execute(record, (migration.version, migration.name, now_ms))
        done.append(migration.version)
    return done


def apply_postgres(
    conn: Any,
    migrations: list[Migration] | None = None,
    *,
    now_ms: int | None = None,
) -> list[int]:
    """Apply the migrations a PostgreSQL database lacks; returns the versions applied now.

    ``conn`` is a psycopg connection in autocommit mode (typed loosely so that this module
    does not import psycopg for SQLite users). Everything runs in one transaction under the
    advisory lock (module docstring); statement_timeout is lifted inside it because a
    migration may legitimately be slow, while lock_timeout bounds the wait for the lock and
    for table locks. Each file runs as one script (PostgreSQL accepts several statements in
    one parameterless query, so no splitting). Raises MigrationError as ``apply_sqlite`` does.
    """
    if migrations is None:
        migrations = load_migrations(POSTGRES_PACKAGE)
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    known = {m.version for m in migrations}
    conn.execute("BEGIN")
    try:
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute(f"SET LOCAL lock_timeout = '{POSTGRES_LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(_CREATE_TABLE_PG)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        _check_known(applied, known)
        done = _apply_missing(conn, migrations, applied, now_ms, split=False, mark="%s")
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except Exception:  # the connection is gone: the server rolled back already
            pass
        raise
    for version in done:
        log.info("applied schema migration %04d (postgresql)", version)
    return done
