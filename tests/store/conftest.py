"""Backends for the store suites: every test that takes ``store`` runs once per backend.

To add a backend, add one entry to ``BACKENDS``: a function of pytest's ``tmp_path`` that
returns the ``open_store`` URL of a fresh, empty store (or calls ``pytest.skip`` when the
backend is not reachable, e.g. PostgreSQL without ``CHAT_TEST_POSTGRES``).
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable

import pytest

from chat_actors.store import Store, open_store


def _memory(tmp_path: pathlib.Path) -> str:
    return "memory://"


def _sqlite(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}"  # tmp_path is absolute: sqlite:////...


BACKENDS: dict[str, Callable[[pathlib.Path], str]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


@pytest.fixture(params=list(BACKENDS))
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as opened:
        yield opened
