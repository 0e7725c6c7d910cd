"""The per-test PostgreSQL database and Redis prefix are real, isolated and removed afterwards.

With `CHAT_REQUIRE_SERVICES=1` (CI) a missing service fails these instead of skipping them.
"""

from __future__ import annotations

import coredis
import psycopg
import pytest
import trio

from services import (  # noqa: F401  (postgres_url and redis_prefix are fixtures)
    POSTGRES_URL,
    fresh_postgres_database,
    fresh_redis_prefix,
    postgres_url,
    redis_prefix,
    unavailable,
)


async def test_postgres_database_is_fresh_and_dropped(postgres_url: str) -> None:
    def use() -> list[tuple]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
            conn.execute("CREATE TABLE t (n integer)")
            conn.execute("INSERT INTO t VALUES (1), (2)")
            return conn.execute("SELECT n FROM t ORDER BY n").fetchall()

    assert await trio.to_thread.run_sync(use) == [(1,), (2,)]


async def test_redis_prefix_is_private(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    async with coredis.Redis.from_url(url) as client:
        assert [k async for k in client.scan_iter(match=prefix + "*")] == []
        await client.set(prefix + "k", "v")
        assert await client.get(prefix + "k") == b"v"


async def test_the_database_is_dropped_and_the_keys_deleted_afterwards() -> None:
    async with fresh_postgres_database() as url:
        name = url.rsplit("/", 1)[1]
    async with fresh_redis_prefix() as (redis_url, prefix):
        async with coredis.Redis.from_url(redis_url) as client:
            await client.set(prefix + "k", "v")

    def databases() -> list[str]:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            return [n for (n,) in conn.execute("SELECT datname FROM pg_database")]

    assert name not in await trio.to_thread.run_sync(databases)
    async with coredis.Redis.from_url(redis_url) as client:
        assert await client.exists([prefix + "k"]) == 0


def test_a_missing_service_fails_when_services_are_required(monkeypatch) -> None:
    monkeypatch.setenv("CHAT_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception):
        unavailable("Redis", "connection refused")
    monkeypatch.setenv("CHAT_REQUIRE_SERVICES", "")
    with pytest.raises(pytest.skip.Exception):
        unavailable("Redis", "connection refused")


async def test_an_unreachable_address_is_reported_not_hung(monkeypatch) -> None:
    monkeypatch.setenv("CHAT_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception):
        async with fresh_redis_prefix("redis://127.0.0.1:1/0"):
            pass
    with pytest.raises(pytest.fail.Exception):
        async with fresh_postgres_database("postgresql://postgres@127.0.0.1:1/test"):
            pass
