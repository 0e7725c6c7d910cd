"""The key/value surface (``chat_actors.bus.KeyValue``: presence, shared rate limits) on the Redis bus.

It runs on the live session's ``pub`` connection (``RedisBus`` hands over a getter for it),
so it shares that session's fate: no session (the bus is down) -> ``BusUnavailable`` at once,
without waiting; a command that fails or exceeds the bus timeout -> ``BusUnavailable``.
Every key is put under the bus prefix. Nothing is retried here: the presence layer decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import coredis
from anyio import BrokenResourceError, ClosedResourceError
from coredis.exceptions import RedisError, ResponseError

from chat_actors.bus.routing import BusUnavailable

__all__ = ["RedisKeyValue"]

T = TypeVar("T")

#: HINCRBY that removes a field reaching 0 or less, atomically (one round trip).
_HINCR_SCRIPT = (
    "local v = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) "
    "if v <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end return v"
)

#: A token bucket as GCRA (the time at which the bucket is full again, kept in ms as a
#: string, with Redis' own clock): one token per ARGV[1] ms, ARGV[2] at most. 1 = taken.
_TAKE_SCRIPT = (
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 "
    "local interval = tonumber(ARGV[1]) "
    "local full = tonumber(redis.call('GET', KEYS[1]) or '0') "
    "if full < now then full = now end "
    "if full - now > (tonumber(ARGV[2]) - 1) * interval then return 0 end "
    "full = full + interval "
    "redis.call('SET', KEYS[1], string.format('%.3f', full), 'PX', math.ceil(full - now) + 1) "
    "return 1"
)


class RedisKeyValue:
    """``KeyValue`` on the live session's ``pub`` connection, every key under the prefix.

    No session (the bus is down) or a command that fails or exceeds the timeout ->
    ``BusUnavailable``. A Redis error reply (e.g. WRONGTYPE) is a programming error and is
    raised as coredis' ResponseError.
    """

    def __init__(self, client: Callable[[], coredis.Redis[bytes] | None], prefix: str) -> None:
        self._live_client = client
        self._prefix = prefix

    async def _call(self, what: str, command: Callable[[coredis.Redis[bytes]], Awaitable[T]]) -> T:
        client = self._live_client()
        if client is None:
            raise BusUnavailable(f"redis bus is down ({what})")
        try:
            return await command(client)
        except ResponseError:
            raise
        except (RedisError, TimeoutError, OSError, ClosedResourceError, BrokenResourceError) as exc:
            raise BusUnavailable(f"redis {what} failed: {exc}") from exc
        except RuntimeError as exc:  # the session's pool closed under this call
            if self._live_client() is client:
                raise
            raise BusUnavailable(f"redis bus went down during {what}") from exc

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def set(self, key: str, value: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        ms = max(1, round(ttl_s * 1000))
        await self._call("SET", lambda c: c.set(self._key(key), value, px=ms))

    async def get(self, key: str) -> str | None:
        value = await self._call("GET", lambda c: c.get(self._key(key)))
        return None if value is None else bytes(value).decode()

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return await self._call("DEL", lambda c: c.delete([self._key(k) for k in keys]))

    async def expire(self, key: str, ttl_s: float) -> bool:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        ms = max(1, round(ttl_s * 1000))
        return bool(await self._call("PEXPIRE", lambda c: c.pexpire(self._key(key), ms)))

    async def hincrby(self, key: str, field: str, by: int) -> int:
        result = await self._call(
            "HINCRBY", lambda c: c.eval(_HINCR_SCRIPT, keys=[self._key(key)], args=[field, by])
        )
        return int(result)  # type: ignore[call-overload]

    async def hset(self, key: str, field: str, value: str) -> None:
        await self._call("HSET", lambda c: c.hset(self._key(key), {field: value}))

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        return await self._call("HDEL", lambda c: c.hdel(self._key(key), list(fields)))

    async def hgetall(self, key: str) -> dict[str, str]:
        raw = await self._call("HGETALL", lambda c: c.hgetall(self._key(key)))
        return {bytes(f).decode(): bytes(v).decode() for f, v in raw.items()}

    async def take_token(self, key: str, *, rate: float, burst: int) -> bool:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        result = await self._call(
            "take_token", lambda c: c.eval(_TAKE_SCRIPT, keys=[self._key(key)], args=[1000.0 / rate, burst])
        )
        return int(result) == 1  # type: ignore[call-overload]
