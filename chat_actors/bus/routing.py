"""The part every bus backend shares: subscriptions, the bounded inbound queue, dispatch.

A backend (``local.py``, ``redis.py``) only moves bytes: it hands each payload it receives for
a topic to ``Router.offer``. From there every event, local or remote, takes the same path:
a bounded trio channel (full -> the newest payload is dropped and counted), one dispatch task
that decodes it (malformed -> dropped and counted) and calls each handler subscribed to the
topic. So the single-node bus exercises exactly the code a cluster runs.

Nothing here blocks a caller: ``subscribe``, ``Subscription.close`` and ``offer`` are
synchronous. The backend learns about topic changes through the ``on_change`` callback and
reconciles its real subscriptions in its own task.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs
import trio

from chat_actors import errors
from chat_actors.bus.events import BusEvent, MalformedEvent, Topic, decode

__all__ = [
    "BusState",
    "BusStatistics",
    "BusUnavailable",
    "Counters",
    "Handler",
    "Router",
    "StateChange",
    "StateListener",
    "Subscription",
]

logger = logging.getLogger(__name__)

BusState = Literal["ok", "down"]

#: Called with each event of a subscribed topic. Should be synchronous and never block (e.g.
#: ``inbox.send_nowait`` into a room actor, catching ``trio.WouldBlock``). An async handler is
#: awaited, which holds up dispatch for every topic of the node; the inbound queue then fills
#: and drops (that is the backpressure policy, not a deadlock). An exception is logged and
#: counted, never propagated: the bus is the boundary to other nodes' input.
Handler = Callable[[BusEvent], "Awaitable[None] | None"]


class BusUnavailable(errors.Unavailable):
    """The bus backend did not answer (down, timed out, or closed); nothing was done."""


@attrs.frozen
class StateChange:
    """A transition of the bus state. ``reconnected`` = back to "ok" after having been down:
    events may have been lost meanwhile, so the node fills every active room's gap from the
    store and re-reads the presence snapshot."""

    state: BusState
    reconnected: bool
    reason: str = ""


StateListener = Callable[[StateChange], None]


@attrs.frozen
class BusStatistics:
    """Counters since the bus opened, plus current queue depths (for /metrics and /readyz).

    ``published``: handed to the backend (redis: written in a pipeline; local: queued).
    ``publish_dropped``: refused by ``publish`` (its queue full or the bus down).
    ``received``: payloads that arrived from the backend. ``receive_dropped``: arrived while
    the inbound queue was full. ``malformed``: not a valid event. ``unrouted``: for a topic
    with no handler (nobody subscribed any more). ``delivered``: events handed to handlers.
    ``reconnects``: times the bus came back after being down. ``connect_attempts``: every
    attempt to (re)connect, the first included. ``probes_missed``: probes that did not come
    back in time.
    """

    state: BusState
    published: int = 0
    publish_dropped: int = 0
    received: int = 0
    receive_dropped: int = 0
    malformed: int = 0
    unrouted: int = 0
    delivered: int = 0
    handler_errors: int = 0
    reconnects: int = 0
    connect_attempts: int = 0
    probes_sent: int = 0
    probes_missed: int = 0
    topics: int = 0
    publish_queue: int = 0
    receive_queue: int = 0

    @property
    def dropped(self) -> int:
        """Every event lost at this node's bounded queues (the receivers fill gaps)."""
        return self.publish_dropped + self.receive_dropped


@attrs.define
class Counters:
    """The mutable counters behind ``BusStatistics`` (owned by one bus, touched by its tasks)."""

    published: int = 0
    publish_dropped: int = 0
    received: int = 0
    receive_dropped: int = 0
    malformed: int = 0
    unrouted: int = 0
    delivered: int = 0
    handler_errors: int = 0
    reconnects: int = 0
    connect_attempts: int = 0
    probes_sent: int = 0
    probes_missed: int = 0

    def snapshot(self, state: BusState, *, topics: int, publish_queue: int = 0, receive_queue: int = 0) -> BusStatistics:
        return BusStatistics(
            state=state,
            topics=topics,
            publish_queue=publish_queue,
            receive_queue=receive_queue,
            **attrs.asdict(self),
        )


class Subscription:
    """One ``subscribe`` call: delivery of ``topic`` to ``handler`` until ``close()``.

    ``close`` is synchronous, idempotent and takes effect at once: no event is handed to the
    handler by this subscription afterwards. Usable as a (sync) context manager.
    """

    __slots__ = ("topic", "handler", "_router", "_closed")

    def __init__(self, router: Router, topic: Topic, handler: Handler) -> None:
        self.topic = topic
        self.handler = handler
        self._router = router
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> bool:
        """True once the backend confirmed the topic (local: at once; redis: SUBSCRIBE acked)."""
        return not self._closed and self._router.is_active(self.topic)

    async def wait_active(self) -> None:
        """Wait until the backend delivers this topic, so that a store read made after it
        cannot miss an event published after the read. While the bus is down this waits
        until it is back: bound it (``trio.move_on_after``) and rely on the reconnect gap
        fill. Returns at once if closed. Cancellation: safe, nothing changes."""
        while not self.active and not self._closed:
            await self._router.wait_activity()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._router._release(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Router:
    """Topic -> handlers, with the bounded inbound queue and its dispatch loop.

    Handlers are reference-counted per (topic, handler): subscribing the same handler twice
    still calls it once per event, and it stays subscribed until both subscriptions close.
    ``on_change`` is called (synchronously) when a topic gains its first or loses its last
    handler, so the backend can (un)subscribe in its own task.
    """

    def __init__(self, counters: Counters, *, queue_size: int, on_change: Callable[[], None]) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._counters = counters
        self._on_change = on_change
        self._handlers: dict[Topic, dict[Handler, int]] = {}
        self._active: set[Topic] = set()
        self._activity = trio.Event()
        self._listeners: list[StateListener] = []
        self._send, self._receive = trio.open_memory_channel[tuple[Topic, bytes]](queue_size)

    # ----------------------------------------------------------------- subscriptions

    def subscribe(self, topic: Topic, handler: Handler) -> Subscription:
        handlers = self._handlers.get(topic)
        if handlers is None:
            handlers = self._handlers[topic] = {}
        handlers[handler] = handlers.get(handler, 0) + 1
        if len(handlers) == 1 and handlers[handler] == 1:
            self._on_change()
        return Subscription(self, topic, handler)

    def _release(self, sub: Subscription) -> None:
        handlers = self._handlers.get(sub.topic)
        if handlers is None or sub.handler not in handlers:
            return
        handlers[sub.handler] -= 1
        if handlers[sub.handler] <= 0:
            del handlers[sub.handler]
        if not handlers:
            del self._handlers[sub.topic]
            self._active.discard(sub.topic)
            self._on_change()
        self._wake()

    def topics(self) -> set[Topic]:
        """Topics with at least one handler right now."""
        return set(self._handlers)

    def has_handlers(self, topic: Topic) -> bool:
        return topic in self._handlers

    # ----------------------------------------------------------------- activity

    def is_active(self, topic: Topic) -> bool:
        return topic in self._active

    def activate(self, topics: set[Topic]) -> None:
        """The backend now delivers these topics (only those still wanted are kept)."""
        self._active |= {t for t in topics if t in self._handlers}
        self._wake()

    def deactivate_all(self) -> None:
        self._active.clear()
        self._wake()

    async def wait_activity(self) -> None:
        await self._activity.wait()

    def _wake(self) -> None:
        self._activity.set()
        self._activity = trio.Event()

    # ----------------------------------------------------------------- state listeners

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unwatch() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unwatch

    def notify_state(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                self._counters.handler_errors += 1
                logger.exception("bus state listener %r failed on %s", listener, change)

    # ----------------------------------------------------------------- inbound path

    def offer(self, topic: Topic, data: bytes) -> bool:
        """Queue one payload for dispatch; False (the payload is dropped) when the queue is
        full. Never blocks: the caller counts the drop under its own name."""
        try:
            self._send.send_nowait((topic, data))
        except trio.WouldBlock:
            return False
        return True

    def queue_depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def run_dispatch(self) -> None:
        """Decode and hand out queued payloads until cancelled (the bus's nursery does).

        Cancellation: the payloads still queued are dropped; an async handler being awaited
        is cancelled with it.
        """
        counters = self._counters
        async for topic, data in self._receive:
            try:
                event = decode(data)
            except MalformedEvent as exc:
                counters.malformed += 1
                logger.warning("dropped a malformed bus payload on %s (%d bytes): %s", topic.key, len(data), exc)
                continue
            handlers = self._handlers.get(topic)
            if not handlers:
                counters.unrouted += 1
                continue
            counters.delivered += 1
            for handler in list(handlers):
                if handler not in handlers:  # unsubscribed by an earlier handler of this event
                    continue
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    counters.handler_errors += 1
                    logger.exception("bus handler %r failed on %s event from %s", handler, topic.key, event.origin)

    def close(self) -> None:
        self._send.close()
