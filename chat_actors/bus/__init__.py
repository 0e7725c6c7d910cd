"""The fan-out bus between nodes: the ``Bus`` interface, its records, and ``open_bus(url)``.

Backends: ``local://`` (``LocalBus``, one node, in process) and ``redis://host:port/db``
(``RedisBus``, PUBLISH/SUBSCRIBE on Redis; ``?prefix=chat:`` and the other options are in
``chat_actors.bus.redis``). Both run the conformance suite in ``tests/bus``.

The bus only makes a cluster fast; it is never the truth. The store holds every message and
its seq, every membership and grant; a node that loses bus events notices (a seq gap, a
probe timeout, a reconnect) and reads what it missed from the store.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

import trio

from chat_actors.bus.events import (
    BusEvent,
    GrantChanged,
    MalformedEvent,
    MembershipChanged,
    MessageCommitted,
    PresenceRelay,
    Probe,
    ReadRelay,
    RoomCreated,
    RoomHead,
    Topic,
    TypingRelay,
    UserEvent,
    decode,
    encode,
)
from chat_actors.bus.routing import (
    BusState,
    BusStatistics,
    BusUnavailable,
    Handler,
    StateChange,
    StateListener,
    Subscription,
)

__all__ = [
    "Bus",
    "BusEvent",
    "BusState",
    "BusStatistics",
    "BusUnavailable",
    "GrantChanged",
    "Handler",
    "KeyValue",
    "MalformedEvent",
    "MembershipChanged",
    "MessageCommitted",
    "PresenceRelay",
    "Probe",
    "ReadRelay",
    "RoomCreated",
    "RoomHead",
    "StateChange",
    "StateListener",
    "Subscription",
    "Topic",
    "TypingRelay",
    "UserEvent",
    "decode",
    "default_node_id",
    "encode",
    "open_bus",
]


@runtime_checkable
class KeyValue(Protocol):
    """The few shared-state commands the presence layer needs beside pub/sub.

    Per-node lease: ``set(f"lease:{node}", info, ttl_s=lease)`` renewed every third of it,
    ``get`` to see whether a node is alive. Per-room view: ``hincrby(f"presence:{room}",
    f"{user}|{node}", ±1)``, ``hgetall`` for the snapshot. Rate limits shared by the nodes:
    ``take_token``. Keys live under the bus prefix
    (the caller never adds it). Every call raises ``BusUnavailable`` when the backend is down
    or does not answer within its timeout; nothing is retried behind the caller's back.
    Cancellation: a cancelled call may or may not have reached the backend.
    """

    async def set(self, key: str, value: str, *, ttl_s: float) -> None:
        """Set ``key`` to ``value``, expiring after ``ttl_s`` seconds (> 0)."""
        ...

    async def get(self, key: str) -> str | None:
        """The value of a live key, else None."""
        ...

    async def delete(self, *keys: str) -> int:
        """Remove keys (plain or hash); returns how many existed."""
        ...

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Give ``key`` (plain or hash) a new time to live; False if it does not exist."""
        ...

    async def hincrby(self, key: str, field: str, by: int) -> int:
        """Add ``by`` to a hash field and return the result; a field that reaches 0 or less is
        removed (atomically), so a hash holds only positive counts."""
        ...

    async def hset(self, key: str, field: str, value: str) -> None:
        """Set one hash field (a node's own entry: only its owner writes it)."""
        ...

    async def hdel(self, key: str, *fields: str) -> int:
        """Remove hash fields (a dead node's entries); returns how many existed."""
        ...

    async def hgetall(self, key: str) -> dict[str, str]:
        """Every field of a hash (empty if none)."""
        ...

    async def take_token(self, key: str, *, rate: float, burst: int) -> bool:
        """Spend one token of the bucket ``key`` (``rate`` tokens per second, at most
        ``burst``, full when new) if it has one; atomic, so the nodes of a cluster share one
        bucket (a rate limit per user rather than per node). Redis keeps the time too, so
        the nodes' clocks do not matter; the key vanishes once the bucket is full again."""
        ...


@runtime_checkable
class Bus(Protocol):
    """Best-effort fan-out of small events between the nodes of one cluster.

    Guarantees (and their absence), for every backend; the conformance suite checks them:

    * **At most once, may lose.** An event is delivered to each subscribed handler zero or one
      time. It is lost when a queue is full (both drop the newest event and count it), while
      the backend is down (``publish`` refuses and counts), across a reconnect, or when the
      payload is malformed (dropped and counted, never a crash).
    * **May reorder.** Events of one topic from one publisher keep their order on a healthy
      connection, but nothing across publishers or across reconnects.
    * **Own events come back.** A node subscribed to a topic receives the events it published
      there itself (local:// always; Redis delivers to every subscriber). Every event carries
      ``origin``: a receiver that already applied its own effect skips
      ``event.origin == bus.node_id``; the sequencer drops a seq it already delivered.
    * **Nothing correct depends on it.** The store is the truth. Receivers fill gaps from the
      store: a seq gap, a ``StateChange(reconnected=True)``, a room actor that subscribes
      (``await sub.wait_active()`` first, then read the store).
    * **No topic, no delivery.** An event published to a topic nobody is subscribed to is
      dropped. Unsubscribing (``Subscription.close()``) stops delivery at once.
    * **Never blocks.** ``subscribe``, ``Subscription.close`` and ``publish`` are synchronous.
      ``publish`` queues into a bounded queue that one publisher task per node drains (and
      pipelines); when it is full ``publish`` returns False and counts ``publish_dropped``.
      Received payloads go through a bounded queue to one dispatch task; when it is full the
      newest payload is dropped and counted (``receive_dropped``).
    * **Health.** ``state`` is "ok" or "down" (for /readyz: "degraded" while down). A
      networked backend reconnects by itself with capped, jittered exponential backoff,
      resubscribes every current topic, and proves delivery with probes on the node's own
      topic (``node_topic``); each change is reported to ``watch_state`` listeners.
    """

    @property
    def node_id(self) -> str: ...

    @property
    def node_topic(self) -> Topic:
        """This node's own topic: its probes, and anything addressed to this node."""
        ...

    @property
    def state(self) -> BusState: ...

    @property
    def kv(self) -> KeyValue: ...

    def subscribe(self, topic: Topic, handler: Handler) -> Subscription:
        """Deliver ``topic``'s events to ``handler`` until the returned subscription closes.

        Reference-counted per (topic, handler): the same pair subscribed twice is called once
        per event and stays until both close. The backend subscribes in the background; see
        ``Subscription.wait_active``.
        """
        ...

    def publish(self, topic: Topic, event: BusEvent) -> bool:
        """Queue ``event`` for ``topic``; False = dropped (queue full or bus down), counted.
        Raises TypeError for a record that is not a bus event (a programming error)."""
        ...

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(StateChange)`` (synchronously, from the bus's task; it must not
        block) on every state change; returns the function that stops it."""
        ...

    def statistics(self) -> BusStatistics: ...


class _Backend(Bus, Protocol):
    """What ``open_bus`` drives: the bus plus its lifetime (not part of the public surface)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def aclose(self) -> None: ...


def default_node_id() -> str:
    """PROTOCOL section 9's default ``CHAT_NODE_ID``: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _connect(url: str, node_id: str) -> _Backend:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "local":
        from chat_actors.bus.local import LocalBus, parse_local_url

        return LocalBus(node_id, **parse_local_url(url))
    if scheme == "redis":
        from chat_actors.bus.redis import RedisBus, parse_redis_url

        return RedisBus(node_id, parse_redis_url(url))
    raise ValueError(f"unsupported bus URL {url!r} (expected local:// or redis://host:port/db)")


@contextlib.asynccontextmanager
async def open_bus(url: str, *, node_id: str | None = None) -> AsyncIterator[Bus]:
    """Open the bus named by ``url`` for node ``node_id``; close it on exit.

    The bus's own tasks (dispatch; for Redis also the supervisor, publisher, prober) run in a
    nursery owned by this context manager and are cancelled on exit: events still queued
    then are dropped. A Redis bus waits for its first connection attempt (bounded by its
    timeout) and opens in state "down" if Redis is not there: the node serves its own
    clients meanwhile and the bus connects when Redis comes. Raises ValueError for a
    malformed URL.
    """
    bus = _connect(url, node_id or default_node_id())
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        try:
            yield bus
        finally:
            with trio.CancelScope(shield=True):
                await bus.aclose()
            nursery.cancel_scope.cancel()
