"""The machine's PostgreSQL and Redis, for tests that need them (PROTOCOL section 9's backends).

Each test gets a database or a key prefix of its own and removes it afterwards: the services
are shared, so nothing here stops, flushes or reconfigures them. A service that cannot be
reached skips the test, unless `CHAT_REQUIRE_SERVICES=1` (CI sets it), where it fails it:
a missing service must never turn into a silently green run.

Addresses: `CHAT_TEST_POSTGRES` (default `postgresql://postgres@127.0.0.1:5432/test`, the
maintenance database used to create and drop per-test databases) and `CHAT_TEST_REDIS`
(default `redis://127.0.0.1:6379/0`).
"""

from __future__ import annotations

import os
import secrets
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_URL = os.environ.get("CHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("CHAT_REQUIRE_SERVICES", "") not in ("", "0")


def unavailable(service: str, why: object) -> None:
    """Skip, or fail when CHAT_REQUIRE_SERVICES=1, for a service that is not there."""
    message = f"{service} is not reachable: {why}"
    if services_required():
        pytest.fail(f"{message} (CHAT_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@asynccontextmanager
async def fresh_postgres_database(admin_url: str = POSTGRES_URL) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it (WITH FORCE: leftover sessions too)."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - in the test extras
        unavailable("PostgreSQL (psycopg)", exc)
    import trio

    name = f"chat_test_{secrets.token_hex(6)}"

    def admin(sql: str) -> None:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    try:
        await trio.to_thread.run_sync(admin, f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield _with_database(admin_url, name)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def fresh_redis_prefix(url: str = REDIS_URL) -> AsyncIterator[tuple[str, str]]:
    """(Redis URL, a key prefix of its own); every key under the prefix is deleted at the end."""
    try:
        import coredis
    except ImportError as exc:  # pragma: no cover - in the test extras
        unavailable("Redis (coredis)", exc)
    import trio

    prefix = f"chat-test-{secrets.token_hex(6)}:"
    try:
        with trio.fail_after(5):
            async with coredis.Redis.from_url(url) as client:
                await client.ping()
    except Exception as exc:  # coredis raises ConnectionError, inside an ExceptionGroup from its task group
        unavailable("Redis", exc)
    try:
        yield url, prefix
    finally:
        with trio.CancelScope(shield=True):
            async with coredis.Redis.from_url(url) as client:
                keys = [key async for key in client.scan_iter(match=prefix + "*")]
                if keys:
                    await client.delete(keys)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """(Redis URL, a key prefix of this test's own), cleaned up after the test."""
    async with fresh_redis_prefix() as pair:
        yield pair
