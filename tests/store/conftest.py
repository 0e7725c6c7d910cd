"""Backends for the store suites: every test that takes ``store`` runs once per backend.

To add a backend, add one entry to ``BACKENDS``: an async context manager factory, given
pytest's ``tmp_path``, that yields the ``open_store`` URL of a fresh, empty store and removes
it afterwards (or skips the test, through ``services.unavailable``, when the backend is not
reachable; with ``CHAT_REQUIRE_SERVICES=1`` that fails it instead).

``store_url`` is a *sync* fixture that holds the backend's context manager open in a helper
thread running its own ``trio.run``: pytest-trio re-runs async fixtures for every Hypothesis
example but may start the example before the new fixture has finished setting up (it then
sees the previous example's URL, whose database was dropped), so a Hypothesis test must only
take sync fixtures. The URL is therefore one per test, shared by its examples.

``peer`` is a second writer of the same data, as another node would be: another store
instance on the same file or database; for ``memory://`` (nothing to share) the same store.
"""

from __future__ import annotations

import contextlib
import pathlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import AsyncContextManager

import pytest
import trio

from chat_actors.store import Store, open_store
from services import fresh_postgres_database

#: Small pools: the machine's PostgreSQL is shared (max_connections 100) and a test opens
#: at most a few stores at once.
POSTGRES_TEST_OPTIONS = "?pool=3"


@contextlib.asynccontextmanager
async def _memory(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    yield "memory://"


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    yield f"sqlite:///{tmp_path / 'chat.db'}"  # tmp_path is absolute: sqlite:////...


@contextlib.asynccontextmanager
async def _postgres(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:  # created here, dropped WITH (FORCE) after
        yield url + POSTGRES_TEST_OPTIONS


BACKENDS: dict[str, Callable[[pathlib.Path], AsyncContextManager[str]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def held_open(manager: AsyncContextManager[str]) -> Iterator[str]:
    """Enter ``manager`` in a helper thread's own trio run, yield its value, exit it there.

    Whatever entering raises (``pytest.skip``/``pytest.fail`` from ``services.unavailable``
    included) is raised here, in the fixture.
    """
    entered: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    release = threading.Event()
    exited: list[BaseException] = []

    async def hold() -> None:
        async with manager as value:
            entered.put((True, value))
            await trio.to_thread.run_sync(release.wait)

    def run() -> None:
        try:
            trio.run(hold)
        except BaseException as exc:  # reported to the fixture, in either phase
            if entered.empty() and not release.is_set():
                entered.put((False, exc))
            else:
                exited.append(exc)

    thread = threading.Thread(target=run, name="store backend", daemon=True)
    thread.start()
    ok, value = entered.get()
    if not ok:
        thread.join()
        raise value  # type: ignore[misc]
    try:
        yield value  # type: ignore[misc]
    finally:
        release.set()
        thread.join(60)
    if exited:
        raise exited[0]


@pytest.fixture
def store_url(backend: str, tmp_path: pathlib.Path) -> Iterator[str]:
    with held_open(BACKENDS[backend](tmp_path)) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as opened:
        yield opened


@pytest.fixture
async def peer(store: Store, store_url: str) -> AsyncIterator[Store]:
    """Another writer of ``store``'s data: a second instance (another node), or for
    ``memory://`` the same store."""
    if store_url.startswith("memory:"):
        yield store
        return
    async with open_store(store_url) as other:
        yield other
