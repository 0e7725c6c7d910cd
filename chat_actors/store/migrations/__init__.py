"""Numbered schema migrations for the SQL stores.

Each change to the schema is a new file ``NNNN_name.sql`` in this package (never an edit of
an applied one), so an existing database moves forward by replaying only what it lacks.
The applied versions are recorded in ``schema_migrations (version, name, applied_ts)``.
All pending migrations run in one transaction: a database is either at the old version or
fully at the new one, and two processes opening the same file at once cannot both apply
them (``BEGIN IMMEDIATE`` serializes them and the second one re-reads the applied set).
A migration that must change ``PRAGMA foreign_keys`` (table rebuilds) cannot run inside
that transaction; such a migration needs its own step here when it is written.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import sqlite3
import time

import attrs

__all__ = ["Migration", "MigrationError", "apply_sqlite", "load_migrations", "split_statements"]

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ts INTEGER NOT NULL
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
        unknown = applied - known
        if unknown:
            raise MigrationError(
                f"database has schema version(s) {sorted(unknown)} unknown to this release "
                f"(knows {sorted(known)}); upgrade chat-actors"
            )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms),
            )
            done.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    for version in done:
        log.info("applied schema migration %04d", version)
    return done
