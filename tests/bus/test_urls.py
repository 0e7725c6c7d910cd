"""open_bus dispatches on the URL scheme; each backend parses (and rejects) its own options."""

from __future__ import annotations

import pytest

from chat_actors.bus import default_node_id, open_bus
from chat_actors.bus.local import parse_local_url
from chat_actors.bus.redis import RedisOptions, parse_redis_url


def test_redis_url_defaults() -> None:
    assert parse_redis_url("redis://127.0.0.1") == RedisOptions(host="127.0.0.1")
    options = parse_redis_url("redis://127.0.0.1:6380/3")
    assert (options.port, options.db, options.prefix) == (6380, 3, "chat:")


def test_redis_url_options() -> None:
    options = parse_redis_url(
        "redis://user:p%40ss@127.0.0.1:6379/1?prefix=chat-a:&probe_interval=0.5&probe_misses=3&probe_patience=7&timeout=1.5"
        "&publish_queue=100&receive_queue=200&batch=16&backoff_min=0.1&backoff_max=4"
    )
    assert options == RedisOptions(
        host="127.0.0.1", port=6379, db=1, username="user", password="p@ss", prefix="chat-a:",
        probe_interval_s=0.5, probe_misses=3, probe_patience=7, timeout_s=1.5, publish_queue=100, receive_queue=200, batch=16,
        backoff_min_s=0.1, backoff_max_s=4.0,
    )
    assert "p@ss" not in repr(options)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1",
        "redis://",
        "redis://127.0.0.1/zero",
        "redis://127.0.0.1:notaport",
        "redis://127.0.0.1?prefix=chat*",
        "redis://127.0.0.1?unknown=1",
        "redis://127.0.0.1?probe_interval=0",
        "redis://127.0.0.1?probe_interval=inf",
        "redis://127.0.0.1?timeout=-1",
        "redis://127.0.0.1?publish_queue=0",
        "redis://127.0.0.1?batch=many",
        "redis://127.0.0.1?backoff_min=5&backoff_max=1",
    ],
)
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)


def test_local_url() -> None:
    assert parse_local_url("local://") == {"queue_size": 10_000}
    assert parse_local_url("local://?queue=5") == {"queue_size": 5}
    for bad in ("local://host", "local://?queue=0", "local://?queue=x", "local://?size=1", "memory://"):
        with pytest.raises(ValueError):
            parse_local_url(bad)


async def test_open_bus_rejects_unknown_schemes() -> None:
    for url in ("kafka://127.0.0.1", "nats://x", ""):
        with pytest.raises(ValueError):
            async with open_bus(url, node_id="n1"):
                pass  # pragma: no cover


async def test_open_bus_defaults_the_node_id() -> None:
    async with open_bus("local://") as bus:
        assert bus.node_id == default_node_id()
        assert str(__import__("os").getpid()) in bus.node_id
