"""Fresh PostgreSQL databases for the cluster deployment, made ahead of time.

Creating a database took 0.1 s on a quiet machine and 0.7 s on a busy one, dropping it up
to as much again, and a new database also needs the schema: paid inside every test, that was
most of what a cluster test cost beyond the same test on one node. So one thread per test
session keeps the next database ready (`CREATE DATABASE ... TEMPLATE` of a database
migrated once) and drops the used ones behind the tests' backs. Every test still gets a
database nobody used before, so nothing leaks from one test into the next; the nodes still
run their migrations at start (there is simply nothing left to apply).

A PostgreSQL that cannot be reached skips the test, or fails it under
CHAT_REQUIRE_SERVICES=1 (`services.unavailable`), as `services.fresh_postgres_database` does.
"""

from __future__ import annotations

import queue
import secrets
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from services import POSTGRES_URL, _with_database, unavailable

#: databases kept ready beyond the one a test is using
AHEAD = 1
#: the longest a test waits for its database (the thread makes one in well under a second)
TAKE_TIMEOUT_S = 60.0


class DatabasePool:
    """Hands out fresh databases (`database()`), made and dropped on a thread of its own."""

    def __init__(self, admin_url: str = POSTGRES_URL, *, ahead: int = AHEAD) -> None:
        self._admin_url = admin_url
        self._ahead = ahead
        self._template = f"chat_test_template_{secrets.token_hex(6)}"
        self._ready: queue.Queue[str | Exception] = queue.Queue()
        #: ("create", "") or ("drop", name); None stops the thread
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """The URL of a database nobody used before; it is dropped (later) after use."""
        name = await trio.to_thread.run_sync(self._take)
        try:
            yield _with_database(self._admin_url, name)
        finally:
            self._jobs.put(("drop", name))

    def close(self) -> None:
        """Drop every database still around, the template last (end of the session)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(TAKE_TIMEOUT_S)

    # -- the thread ------------------------------------------------------------------------------
    def _take(self) -> str:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="test databases", daemon=True)
            self._thread.start()
            for _ in range(self._ahead):
                self._jobs.put(("create", ""))
        self._jobs.put(("create", ""))           # the next test's
        try:
            item = self._ready.get(timeout=TAKE_TIMEOUT_S)
        except queue.Empty:
            unavailable("PostgreSQL", f"no database made within {TAKE_TIMEOUT_S} s")
        if isinstance(item, Exception):
            unavailable("PostgreSQL", item)
        return item  # type: ignore[return-value]

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def _make_template(self) -> None:
        import psycopg

        from chat_actors.store import migrations

        self._admin(f'DROP DATABASE IF EXISTS "{self._template}" WITH (FORCE)')   # a failed attempt's
        self._admin(f'CREATE DATABASE "{self._template}"')
        with psycopg.connect(_with_database(self._admin_url, self._template), autocommit=True,
                             connect_timeout=5) as conn:
            migrations.apply_postgres(conn)

    def _run(self) -> None:
        templated = False
        while (job := self._jobs.get()) is not None:
            kind, name = job
            try:
                if kind == "drop":
                    self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    continue
                if not templated:
                    self._make_template()
                    templated = True
                name = f"chat_test_{secrets.token_hex(6)}"
                self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
                self._ready.put(name)
            except Exception as exc:            # psycopg's errors, a failed migration
                if kind == "create":
                    self._ready.put(exc)
        leftovers = []
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, str):
                leftovers.append(item)
        for name in [*leftovers, self._template]:
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:                   # the service went away: nothing to drop
                pass
