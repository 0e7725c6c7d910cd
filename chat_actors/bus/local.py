"""``local://``: the bus of a single node, in process.

Like centrifuge's memory broker, it is not a shortcut: ``publish`` encodes the event and puts
the bytes into the same bounded inbound queue a Redis message goes into, and the same
dispatch task decodes them and calls the handlers. So a single node exercises the codec,
the drop policy and the handler path of a cluster, and a handler is never called
re-entrantly from inside ``publish`` (it runs later, in the bus's dispatch task).

There is nothing to lose a connection to: ``state`` is always "ok", no probes run and state
listeners are never called. The key/value surface is an in-memory dict with TTLs on
``trio.current_time()`` (so it follows a test's fake clock).

URL: ``local://`` with the optional ``?queue=N`` (inbound queue capacity, default 10000).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable

import trio

from chat_actors.bus.events import BusEvent, Topic, encode
from chat_actors.bus.routing import (
    BusState,
    BusStatistics,
    Counters,
    Handler,
    Router,
    StateListener,
    Subscription,
)

__all__ = ["LocalBus", "LocalKeyValue", "parse_local_url"]

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = 10_000


def parse_local_url(url: str) -> dict[str, int]:
    """``local://?queue=N`` -> ``{"queue_size": N}``. ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "local" or parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"a local bus URL is local:// with optional ?queue=N, got {url!r}")
    options: dict[str, int] = {"queue_size": DEFAULT_QUEUE}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key != "queue":
            raise ValueError(f"unknown local bus option {key!r} in {url!r}")
        try:
            options["queue_size"] = int(value)
        except ValueError:
            raise ValueError(f"local bus option queue must be an integer, got {value!r}") from None
        if options["queue_size"] < 1:
            raise ValueError("local bus option queue must be at least 1")
    return options


class LocalKeyValue:
    """The presence key/value surface on dicts. Expired entries vanish on read and are swept
    on writes, so memory follows the live keys. Each call checkpoints once (it behaves like
    a network call under cancellation: a cancelled call did nothing)."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float]] = {}
        self._hashes: dict[str, dict[str, int | str]] = {}
        self._hash_expiry: dict[str, float] = {}
        self._writes = 0

    def _live(self, key: str) -> tuple[str, float] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] <= trio.current_time():
            del self._values[key]
            return None
        return entry

    def _hash(self, key: str) -> dict[str, int] | None:
        expiry = self._hash_expiry.get(key)
        if expiry is not None and expiry <= trio.current_time():
            self._hashes.pop(key, None)
            del self._hash_expiry[key]
        return self._hashes.get(key)

    def _sweep(self) -> None:
        self._writes += 1
        if self._writes % 1024:
            return
        now = trio.current_time()
        for key in [k for k, (_, exp) in self._values.items() if exp <= now]:
            del self._values[key]
        for key in [k for k, exp in self._hash_expiry.items() if exp <= now]:
            self._hashes.pop(key, None)
            del self._hash_expiry[key]

    async def set(self, key: str, value: str, *, ttl_s: float) -> None:
        await trio.lowlevel.checkpoint()
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._sweep()
        self._values[key] = (value, trio.current_time() + ttl_s)

    async def get(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        entry = self._live(key)
        return None if entry is None else entry[0]

    async def delete(self, *keys: str) -> int:
        await trio.lowlevel.checkpoint()
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                del self._values[key]
                removed += 1
            if self._hash(key) is not None:
                del self._hashes[key]
                self._hash_expiry.pop(key, None)
                removed += 1
        return removed

    async def expire(self, key: str, ttl_s: float) -> bool:
        await trio.lowlevel.checkpoint()
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        deadline = trio.current_time() + ttl_s
        entry = self._live(key)
        if entry is not None:
            self._values[key] = (entry[0], deadline)
            return True
        if self._hash(key) is not None:
            self._hash_expiry[key] = deadline
            return True
        return False

    async def hincrby(self, key: str, field: str, by: int) -> int:
        await trio.lowlevel.checkpoint()
        self._sweep()
        fields = self._hash(key)
        if fields is None:
            fields = self._hashes[key] = {}
        value = int(fields.get(field, 0)) + by
        if value <= 0:
            fields.pop(field, None)
            if not fields:
                del self._hashes[key]
                self._hash_expiry.pop(key, None)
        else:
            fields[field] = value
        return value

    async def hset(self, key: str, field: str, value: str) -> None:
        await trio.lowlevel.checkpoint()
        self._sweep()
        fields = self._hash(key)
        if fields is None:
            fields = self._hashes[key] = {}
        fields[field] = value

    async def hdel(self, key: str, *fields: str) -> int:
        await trio.lowlevel.checkpoint()
        current = self._hash(key)
        if current is None:
            return 0
        removed = sum(1 for f in fields if current.pop(f, None) is not None)
        if not current:
            del self._hashes[key]
            self._hash_expiry.pop(key, None)
        return removed

    async def hgetall(self, key: str) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        fields = self._hash(key)
        return {} if fields is None else {f: str(v) for f, v in fields.items()}

    async def take_token(self, key: str, *, rate: float, burst: int) -> bool:
        """The same bucket as the Redis backend's (GCRA: the time the bucket is full again,
        kept as a plain key that expires then)."""
        await trio.lowlevel.checkpoint()
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._sweep()
        now = trio.current_time()
        interval = 1.0 / rate
        entry = self._live(key)
        full = max(now, float(entry[0])) if entry is not None else now
        if full - now > (burst - 1) * interval:
            return False
        full += interval
        self._values[key] = (repr(full), full)
        return True


class LocalBus:
    """One node's bus: publish -> bounded queue -> dispatch task -> handlers.

    ``publish`` never blocks: it returns False and counts ``publish_dropped`` when the queue
    (``queue_size`` payloads) is full. Topics are active as soon as they are subscribed.
    """

    def __init__(self, node_id: str, *, queue_size: int = DEFAULT_QUEUE) -> None:
        self.node_id = node_id
        self.node_topic = Topic.node(node_id)
        self.kv = LocalKeyValue()
        self._counters = Counters()
        self._router = Router(self._counters, queue_size=queue_size, on_change=self._topics_changed)

    @property
    def state(self) -> BusState:
        return "ok"

    def _topics_changed(self) -> None:
        self._router.activate(self._router.topics())

    def subscribe(self, topic: Topic, handler: Handler) -> Subscription:
        return self._router.subscribe(topic, handler)

    def publish(self, topic: Topic, event: BusEvent) -> bool:
        data = encode(event)
        if not self._router.offer(topic, data):
            self._counters.publish_dropped += 1
            return False
        self._counters.published += 1
        self._counters.received += 1
        return True

    def inject(self, topic: Topic, data: bytes) -> bool:
        """Queue raw payload bytes as if they had arrived from another node (tests, tools)."""
        self._counters.received += 1
        if not self._router.offer(topic, data):
            self._counters.receive_dropped += 1
            return False
        return True

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        return self._router.watch_state(listener)

    def statistics(self) -> BusStatistics:
        return self._counters.snapshot(
            "ok", topics=len(self._router.topics()), receive_queue=self._router.queue_depth()
        )

    async def aclose(self) -> None:
        """Nothing to stop in order: ``open_bus`` cancels the dispatch task after this."""
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The dispatch task; ``open_bus`` starts it in the bus's nursery and cancels it on
        exit (events still queued then are dropped)."""
        task_status.started()
        try:
            await self._router.run_dispatch()
        finally:
            self._router.close()
