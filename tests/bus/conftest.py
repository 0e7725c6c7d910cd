"""Backends for the bus suites: every test that takes ``harness`` runs once per backend.

A ``Harness`` opens buses of one cluster (``open``), of another cluster (``open_other``,
Redis only: another key prefix on the same server), and puts raw bytes on a topic as if
another node had sent them (``inject``). Redis tests use a key prefix of their own from
``tests/services.py`` (skipped, or failed under CHAT_REQUIRE_SERVICES=1, without Redis).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import coredis
import pytest
import trio

from chat_actors.bus import Bus, Topic, open_bus
from services import fresh_redis_prefix

#: Option names each backend's URL uses for the same knob.
_LOCAL_NAMES = {"receive_queue": "queue"}


class Harness:
    name: str = ""
    shared: bool = False  # do two buses from `open` form one cluster?

    def url(self, **options: Any) -> str:
        raise NotImplementedError

    def open(self, node_id: str, **options: Any) -> contextlib.AbstractAsyncContextManager[Bus]:
        return open_bus(self.url(**options), node_id=node_id)

    def open_other(self, node_id: str) -> contextlib.AbstractAsyncContextManager[Bus]:
        raise NotImplementedError

    async def inject(self, bus: Bus, topic: Topic, data: bytes) -> None:
        raise NotImplementedError


class LocalHarness(Harness):
    name = "local"

    def url(self, **options: Any) -> str:
        query = {_LOCAL_NAMES[k]: v for k, v in options.items() if k in _LOCAL_NAMES}
        return "local://" + ("?" + urllib.parse.urlencode(query) if query else "")

    async def inject(self, bus: Bus, topic: Topic, data: bytes) -> None:
        bus.inject(topic, data)  # type: ignore[attr-defined]
        await trio.lowlevel.checkpoint()


class RedisHarness(Harness):
    name = "redis"
    shared = True

    def __init__(self, url: str, prefix: str, raw: coredis.Redis[bytes]) -> None:
        self.base = url
        self.prefix = prefix
        self.raw = raw

    def url(self, *, prefix: str | None = None, **options: Any) -> str:
        query = {"prefix": prefix or self.prefix, "probe_interval": 0.5, "timeout": 2, **options}
        return f"{self.base}?{urllib.parse.urlencode(query)}"

    def open_other(self, node_id: str) -> contextlib.AbstractAsyncContextManager[Bus]:
        return open_bus(self.url(prefix=self.prefix + "other:"), node_id=node_id)

    async def inject(self, bus: Bus, topic: Topic, data: bytes) -> None:
        await self.raw.publish(bus.channel(topic), data)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _redis_harness() -> AsyncIterator[Harness]:
    async with fresh_redis_prefix() as (url, prefix):
        async with coredis.Redis.from_url(url) as raw:
            yield RedisHarness(url, prefix, raw)


@contextlib.asynccontextmanager
async def _local_harness() -> AsyncIterator[Harness]:
    yield LocalHarness()


BACKENDS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Harness]]] = {
    "local": _local_harness,
    "redis": _redis_harness,
}


@pytest.fixture(params=list(BACKENDS))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with BACKENDS[request.param]() as opened:
        yield opened


@pytest.fixture
async def redis_harness() -> AsyncIterator[Harness]:
    async with _redis_harness() as opened:
        yield opened


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms; fail the test if it is not true within ``timeout``."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    pytest.fail(f"{what} not reached within {timeout} s")
