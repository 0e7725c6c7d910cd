"""``redis://``: the cluster bus on Redis PUBLISH/SUBSCRIBE, through coredis (anyio, so trio).

Shape of one **session** (one attempt to be connected), run again by ``health.supervise``
with capped, jittered exponential backoff after every failure:

* two connections: ``pub`` (PUBLISH in pipelines, probes, the key/value commands) and
  ``sub`` (SUBSCRIBE, held by a coredis ``PubSub``). Both use coredis' ``NoRetryPolicy``:
  coredis' own silent reconnect-and-resubscribe would hide the outage from the node, which
  must then fill gaps from the store. We own reconnecting instead.
* setup, bounded by ``timeout``: connect, PING, SUBSCRIBE the node's own channel and every
  current topic, then one probe round trip. Only then is ``state`` "ok" and the
  ``StateChange`` reported (``reconnected=True`` if the bus had been down).
* tasks: ``drain`` (coredis buffers pub/sub messages in an unbounded stream; this task empties
  it at once into the bounded inbound queue, dropping the newest payload when that is full);
  ``publisher`` (drains the bounded publish queue, up to ``batch`` events per pipeline);
  ``prober`` (a probe on the node's channel every ``probe_interval``; ``probe_misses`` in a
  row not back while nothing else arrives either -> ProbeTimeout: a silent bus is a down bus;
  a probe only stuck behind a backlog gets ``probe_patience`` intervals); the reconciler
  (SUBSCRIBE / UNSUBSCRIBE as topics come and go).
* any failure (connection lost, a command or an ack over ``timeout``, probes missing) ends the
  session: ``state`` "down", the publish queue is emptied (counted as dropped: the receivers
  fill gaps from the store, and stale relays are better lost than late), ``publish`` refuses
  until the next session is up, and key/value calls raise ``BusUnavailable``.

URL: ``redis://[user:password@]host[:port][/db][?option=value&...]``, options:
``prefix`` (default ``chat:``; every channel and key is under it, so several clusters or test
runs share one Redis; no glob characters), ``probe_interval`` (s, 1), ``probe_misses`` (2:
probes in a row not back, with nothing else arriving, that mean down), ``probe_patience``
(10: intervals a probe may lag behind other traffic before the backlog counts as down),
``timeout`` (s, 2: connect, each command and subscription ack), ``publish_queue`` (10000),
``receive_queue`` (10000), ``batch`` (256 events per pipeline), ``backoff_min`` (s, 0.25) and
``backoff_max`` (s, 2.5).
"""

from __future__ import annotations

import logging
import math
import re
import urllib.parse
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import coredis
import trio
from coredis.patterns.pubsub import PubSub
from coredis.retry import NoRetryPolicy

from chat_actors.bus.events import BusEvent, MalformedEvent, Probe, Topic, decode, encode
from chat_actors.bus.health import Backoff, ProbeMonitor, ProbeTimeout, describe_failure, supervise
from chat_actors.bus.redis_kv import RedisKeyValue
from chat_actors.bus.routing import (
    BusState,
    BusStatistics,
    Counters,
    Handler,
    Router,
    StateChange,
    StateListener,
    Subscription,
)

__all__ = ["RedisBus", "RedisKeyValue", "RedisOptions", "parse_redis_url"]

logger = logging.getLogger(__name__)

_PROBE_HEAD = b'{"k":"probe"'
_GLOB = re.compile(r"[*?\[\]\\]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


@attrs.frozen
class RedisOptions:
    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    prefix: str = "chat:"
    probe_interval_s: float = 1.0
    probe_misses: int = 2
    probe_patience: int = 10
    timeout_s: float = 2.0
    publish_queue: int = 10_000
    receive_queue: int = 10_000
    batch: int = 256
    backoff_min_s: float = 0.25
    backoff_max_s: float = 2.5


_FLOAT_OPTIONS = {
    "probe_interval": "probe_interval_s",
    "timeout": "timeout_s",
    "backoff_min": "backoff_min_s",
    "backoff_max": "backoff_max_s",
}
_INT_OPTIONS = {
    "probe_misses": "probe_misses",
    "probe_patience": "probe_patience",
    "publish_queue": "publish_queue",
    "receive_queue": "receive_queue",
    "batch": "batch",
}


def parse_redis_url(url: str) -> RedisOptions:
    """``redis://host:port/db?prefix=chat:&...`` -> RedisOptions; ValueError when malformed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"redis URL needs a host: {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in redis URL {url!r}") from None
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"redis URL path must be a database number: {url!r}") from None
    values: dict[str, Any] = {
        "host": parts.hostname,
        "port": port,
        "db": db,
        "username": urllib.parse.unquote(parts.username) if parts.username else None,
        "password": urllib.parse.unquote(parts.password) if parts.password else None,
    }
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key == "prefix":
                if _GLOB.search(value):
                    raise ValueError("the prefix may not contain * ? [ ] or \\")
                values["prefix"] = value
            elif key in _FLOAT_OPTIONS:
                number = float(value)
                if not number > 0 or math.isinf(number):
                    raise ValueError("must be a positive number of seconds")
                values[_FLOAT_OPTIONS[key]] = number
            elif key in _INT_OPTIONS:
                count = int(value)
                if count < 1:
                    raise ValueError("must be at least 1")
                values[_INT_OPTIONS[key]] = count
            else:
                raise ValueError("unknown option")
        except ValueError as exc:
            raise ValueError(f"redis bus option {key}={value!r}: {exc}") from None
    options = RedisOptions(**values)
    if options.backoff_min_s > options.backoff_max_s:
        raise ValueError("redis bus option backoff_min must not exceed backoff_max")
    return options


class RedisBus:
    """The ``Bus`` on Redis pub/sub; see the module docstring for its sessions and policies."""

    def __init__(self, node_id: str, options: RedisOptions) -> None:
        self.node_id = node_id
        self.options = options
        self.node_topic = Topic.node(node_id)
        self.kv = RedisKeyValue(lambda: self._client, options.prefix)
        self._prefix = options.prefix.encode()
        self._node_channel = self.channel(self.node_topic)
        self._client_name = _NAME_UNSAFE.sub("_", f"chat-bus:{node_id}")
        self._counters = Counters()
        self._router = Router(self._counters, queue_size=options.receive_queue, on_change=self._topics_changed)
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[bytes, bytes]](options.publish_queue)
        self._backoff = Backoff(options.backoff_min_s, options.backoff_max_s)
        self._monitor = ProbeMonitor(options.probe_misses, max(options.probe_misses, options.probe_patience))
        self._probe_back = trio.Event()
        self._topics_dirty = trio.Event()
        self._first_attempt = trio.Event()
        self._state: BusState = "down"
        self._was_down = False
        self._closing = False
        self._down_reported = False
        self._work: trio.CancelScope | None = None
        self._session_over = trio.Event()
        self._client: coredis.Redis[bytes] | None = None

    # ----------------------------------------------------------------- Bus API

    @property
    def state(self) -> BusState:
        return self._state

    def channel(self, topic: Topic) -> bytes:
        """The Redis channel of ``topic``: prefix + topic key."""
        return self._prefix + topic.key.encode()

    def _topic_of(self, channel: bytes) -> Topic | None:
        if not channel.startswith(self._prefix):
            return None
        try:
            return Topic.from_key(channel[len(self._prefix):].decode())
        except UnicodeDecodeError:
            return None

    def subscribe(self, topic: Topic, handler: Handler) -> Subscription:
        return self._router.subscribe(topic, handler)

    def publish(self, topic: Topic, event: BusEvent) -> bool:
        data = encode(event)
        if self._state != "ok":
            self._counters.publish_dropped += 1
            return False
        try:
            self._out_send.send_nowait((self.channel(topic), data))
        except trio.WouldBlock:
            self._counters.publish_dropped += 1
            return False
        return True

    def watch_state(self, listener: StateListener) -> Callable[[], None]:
        return self._router.watch_state(listener)

    def statistics(self) -> BusStatistics:
        self._counters.probes_missed = self._monitor.missed_total
        return self._counters.snapshot(
            self._state,
            topics=len(self._router.topics()),
            publish_queue=self._out_send.statistics().current_buffer_used,
            receive_queue=self._router.queue_depth(),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch and the supervisor; started once the first attempt is up or has failed."""
        o = self.options
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._router.run_dispatch)
                nursery.start_soon(
                    partial(
                        supervise,
                        self._session,
                        self._backoff,
                        on_attempt=self._attempting,
                        on_down=self._went_down,
                        stable_s=max(o.backoff_max_s, o.probe_interval_s * o.probe_misses),
                    )
                )
                await self._first_attempt.wait()
                task_status.started()
        finally:
            self._state = "down"
            self._client = None
            self._router.close()

    async def aclose(self) -> None:
        """Stop the session in order (our tasks first, then coredis' UNSUBSCRIBE and the
        connections), bounded by the timeout; ``open_bus`` then cancels what is left."""
        self._closing = True
        self._state = "down"
        work = self._work
        if work is not None:
            work.cancel()
            with trio.move_on_after(self.options.timeout_s):
                await self._session_over.wait()

    # ----------------------------------------------------------------- state

    def _topics_changed(self) -> None:
        self._topics_dirty.set()

    def _attempting(self) -> None:
        self._counters.connect_attempts += 1

    def _went_up(self, subscribed: set[bytes]) -> None:
        reconnected = self._was_down
        self._state = "ok"
        self._activate(subscribed)
        if reconnected:
            self._counters.reconnects += 1
        logger.info("bus up on redis %s:%s (node %s, %s)", self.options.host, self.options.port,
                    self.node_id, "reconnected" if reconnected else "first connection")
        self._first_attempt.set()
        self._router.notify_state(StateChange("ok", reconnected))

    def _went_down(self, reason: str) -> None:
        """The session is over (or, called early from inside it, failing): refuse publishes,
        drop the publish queue, report the change once. Idempotent per session."""
        was_ok = self._state == "ok"
        self._state = "down"
        self._was_down = True
        self._client = None
        self._router.deactivate_all()
        dropped = 0
        while True:
            try:
                self._out_recv.receive_nowait()
            except trio.WouldBlock:
                break
            dropped += 1
        self._counters.publish_dropped += dropped
        self._first_attempt.set()
        if self._closing:
            if was_ok:
                logger.info("bus closed (node %s)", self.node_id)
        elif was_ok:
            logger.warning("bus down (node %s): %s; %d queued events dropped", self.node_id, reason, dropped)
            self._router.notify_state(StateChange("down", False, reason))
        elif not self._down_reported:
            logger.info("bus still down (node %s): %s", self.node_id, reason)
        self._down_reported = True

    def _wanted(self) -> set[bytes]:
        return {self._node_channel} | {self.channel(t) for t in self._router.topics()}

    def _activate(self, subscribed: set[bytes]) -> None:
        self._router.activate({t for t in self._router.topics() if self.channel(t) in subscribed})

    # ----------------------------------------------------------------- one session

    def _redis(self, role: str) -> coredis.Redis[bytes]:
        o = self.options
        return coredis.Redis(
            host=o.host,
            port=o.port,
            db=o.db,
            username=o.username,
            password=o.password,
            stream_timeout=o.timeout_s,
            connect_timeout=o.timeout_s,
            pool_timeout=o.timeout_s,
            max_connections=1,
            retry_policy=NoRetryPolicy(),
            client_name=f"{self._client_name}:{role}",
        )

    async def _session(self, mark_up: Callable[[], None]) -> None:
        """One connected lifetime; returns when closed, raises when it fails.

        coredis' pub/sub cleanup can trip over its own connection when both are cancelled at
        once (an abrupt cancellation from outside): the errors it adds to the Cancelled are
        noise then, so only the Cancelled goes on (and the enclosing scope absorbs it).
        """
        try:
            await self._connected(mark_up)
        except BaseExceptionGroup as group:
            cancelled, rest = group.split(trio.Cancelled)
            if cancelled is None or rest is None:
                raise
            logger.debug("bus session cancelled; ignoring %r from coredis' cleanup", rest)
            raise cancelled from None
        finally:
            self._client = None
            self._work = None
            self._session_over.set()

    async def _connected(self, mark_up: Callable[[], None]) -> None:
        o = self.options
        self._session_over = trio.Event()
        self._down_reported = False
        failure: Exception | None = None
        with trio.CancelScope(deadline=trio.current_time() + o.timeout_s) as setup:
            async with self._redis("pub") as client, self._redis("sub") as sub_client:
                async with PubSub(
                    sub_client.connection_pool,
                    ignore_subscribe_messages=True,
                    retry_policy=NoRetryPolicy(),
                    subscription_timeout=o.timeout_s,
                    unsubscription_timeout=min(0.5, o.timeout_s),
                    max_idle_seconds=max(15.0, 5 * o.probe_interval_s),
                ) as pubsub:
                    await client.ping()
                    self._topics_dirty = trio.Event()
                    subscribed = self._wanted()
                    await pubsub.subscribe(*subscribed)
                    # Our tasks run in their own scope so that closing (or one of them
                    # failing) ends them first; pub/sub and pools then exit in order, with
                    # their connections still open for coredis' UNSUBSCRIBE.
                    with trio.CancelScope() as work:
                        self._work = work
                        if self._closing:
                            work.cancel()
                        try:
                            async with trio.open_nursery() as nursery:
                                nursery.start_soon(self._drain, pubsub)
                                await self._first_probe(client)
                                setup.deadline = math.inf
                                self._client = client
                                self._went_up(subscribed)
                                mark_up()
                                nursery.start_soon(self._publisher, client)
                                nursery.start_soon(self._prober, client)
                                await self._reconcile(pubsub, subscribed)
                        except Exception as exc:
                            failure = exc
                            self._went_down(describe_failure(exc))  # at once, not after teardown
                        finally:
                            self._client = None
                    if self._closing and failure is None:
                        # Leave nothing subscribed: coredis' own clean-up otherwise waits out
                        # its whole unsubscription timeout for acks it never stops waiting
                        # for, which made every clean stop half a second longer.
                        with trio.move_on_after(min(0.5, o.timeout_s)):
                            await pubsub.unsubscribe()
        if failure is not None:
            raise failure
        if setup.cancelled_caught:
            raise TimeoutError(f"redis did not come up within {o.timeout_s} s")

    async def _reconcile(self, pubsub: PubSub[bytes], subscribed: set[bytes]) -> None:
        """(Un)subscribe as topics come and go, batching whatever changed meanwhile. An ack
        not received within the timeout raises TimeoutError, which ends the session."""
        while True:
            await self._topics_dirty.wait()
            self._topics_dirty = trio.Event()
            wanted = self._wanted()
            add = wanted - subscribed
            remove = subscribed - wanted
            if add:
                await pubsub.subscribe(*add)
                subscribed |= add
            if remove:
                await pubsub.unsubscribe(*remove)
                subscribed -= remove
            self._activate(subscribed)

    async def _drain(self, pubsub: PubSub[bytes]) -> None:
        """Move every pub/sub message out of coredis' unbounded buffer at once: probes to the
        monitor, the rest into the bounded inbound queue (full -> drop the newest, count)."""
        counters = self._counters
        router = self._router
        node_channel = self._node_channel
        monitor = self._monitor
        while True:
            message = await pubsub.get_message()
            if message is None or message["type"] != "message":
                continue
            channel = bytes(message["channel"])
            data = bytes(message["data"])
            if channel == node_channel and data.startswith(_PROBE_HEAD) and self._take_probe(data):
                continue
            counters.received += 1
            monitor.traffic()
            topic = self._topic_of(channel)
            if topic is None or not router.has_handlers(topic):
                counters.unrouted += 1
            elif not router.offer(topic, data):
                counters.receive_dropped += 1

    def _take_probe(self, data: bytes) -> bool:
        try:
            event = decode(data)
        except MalformedEvent:
            return False
        if not isinstance(event, Probe) or event.origin != self.node_id:
            return False
        if self._monitor.seen(event.n):
            self._probe_back.set()
        return True

    async def _send_probe(self, client: coredis.Redis[bytes], n: int) -> None:
        receivers = await client.publish(self._node_channel, encode(Probe(self.node_id, n)))
        self._counters.probes_sent += 1
        if receivers < 1:
            logger.warning("bus probe %d reached no subscriber: our subscription is gone", n)

    async def _first_probe(self, client: coredis.Redis[bytes]) -> None:
        self._probe_back = trio.Event()
        await self._send_probe(client, self._monitor.start())
        while self._monitor.waiting:
            await self._probe_back.wait()
            self._probe_back = trio.Event()

    async def _prober(self, client: coredis.Redis[bytes]) -> None:
        """Raise ProbeTimeout (ending the session) when probes stop coming back.

        A PUBLISH that does not answer within one interval is abandoned (the probe then
        counts as missed at the next check), so a black-holed connection is detected after
        ``probe_misses`` intervals whatever the command timeout; probe PUBLISHes that stay
        unanswered for the timeout end the session too (TimeoutError), even while other
        nodes' events still arrive on the subscription.
        """
        interval = self.options.probe_interval_s
        due_at = trio.current_time()
        stalled_since: float | None = None
        while True:
            due_at += interval
            await trio.sleep_until(due_at)
            try:
                n = self._monitor.due()
            except ProbeTimeout:
                self._counters.probes_missed = self._monitor.missed_total
                raise
            self._counters.probes_missed = self._monitor.missed_total
            with trio.move_on_at(due_at + interval) as late:
                await self._send_probe(client, n)
            if not late.cancelled_caught:
                stalled_since = None
            elif stalled_since is None:
                stalled_since = due_at
            elif trio.current_time() - stalled_since >= self.options.timeout_s:
                # the publishing side is dead even if other nodes' events still arrive
                raise TimeoutError(f"PUBLISH of probes has not answered for {self.options.timeout_s} s")

    async def _publisher(self, client: coredis.Redis[bytes]) -> None:
        """Drain the publish queue, one pipeline per batch. A batch cut short by a failure or
        cancellation is counted as dropped (it may or may not have reached Redis)."""
        receive = self._out_recv
        counters = self._counters
        batch_max = self.options.batch
        while True:
            batch = [await receive.receive()]
            while len(batch) < batch_max:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                async with client.pipeline(transaction=False, timeout=self.options.timeout_s) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
            except BaseException:
                counters.publish_dropped += len(batch)
                raise
            counters.published += len(batch)
