"""This node's side of a cluster: what the room actors tell the bus, and what the bus tells them.

Why a module of its own: room actors stay about one room. They call the synchronous,
never-blocking publishers here (`message`, `typing`, `read`, `presence`, `head`); events
from other nodes come back through one handler per topic kind and reach the room's actor
as a `RemoteCmd` in its inbox, so the actor is still the only code that touches its state.
The bus may lose anything (PROTOCOL section 9, `chat_actors.bus`): whenever a loss is
possible (the bus came back, a queue dropped an event, an inbox was full) the affected
rooms get a `CatchUpCmd` and read what they missed from the store.

Presence across nodes (docs/design.md): each node announces its own users per room (their
joined connections on this node) on the room's topic and keeps the same figure in the
room's Redis hash `presence:<room>`, field `<user>|<instance>`, from which a room actor
that starts reads the snapshot. An instance is the node id plus a random suffix per
process, so a node restarted under the same CHAT_NODE_ID never inherits the entries of its
previous life. Each instance holds a lease `lease:<instance>` (CHAT_NODE_LEASE, renewed
every third of it) and lists itself in the hash `instances`, so every node watches every
other one, even one it never heard a word from; when a lease lapses, every room forgets that
instance's users after the grace period and reads its head from the store: a node that dies
may have committed, and acked, messages that never got onto the bus.

A single node (`local://`) runs no link at all: nobody else could hear it, and the hot
path pays nothing for the cluster.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import TYPE_CHECKING

import trio

from .bus import (
    Bus,
    BusEvent,
    BusUnavailable,
    GrantChanged,
    MessageCommitted,
    PresenceRelay,
    ReadRelay,
    RoomHead,
    StateChange,
    Subscription,
    Topic,
    TypingRelay,
)
from .commands import CatchUpCmd, GrantCmd, NodeGoneCmd, RemoteCmd
from .errors import ChatError

if TYPE_CHECKING:
    from .metrics import Metrics
    from .registry import Registry
    from .sessions import Sessions
    from .store import Store

log = logging.getLogger(__name__)

__all__ = ["ClusterLink", "instance_id"]

#: Presence writes waiting for Redis; beyond it they are dropped and a full re-announce
#: follows (the newest state is what matters, not every step).
KV_QUEUE = 10_000
#: How often the counters of dropped bus events are looked at.
DROP_CHECK_S = 1.0
#: The longest a starting room actor waits for its presence snapshot.
SNAPSHOT_TIMEOUT_S = 1.0
#: The hash every live instance lists itself in (field: instance, value: node id).
INSTANCES_KEY = "instances"


def instance_id(node_id: str) -> str:
    """The bus identity of this process: the node id plus a suffix unique to this process."""
    return f"{node_id}.{secrets.token_hex(3)}"


def _presence_key(room: str) -> str:
    return f"presence:{room}"


class ClusterLink:
    """See the module docstring. `run` owns the link's tasks; `bind` gives it the registry."""

    def __init__(self, bus: Bus, *, node_id: str, lease_s: float, metrics: Metrics) -> None:
        self.bus = bus
        self.node_id = node_id
        self.instance = bus.node_id
        self.lease_s = lease_s
        self._metrics = metrics
        self._registry: Registry | None = None
        self._store: Store | None = None
        self._sessions: Sessions | None = None
        self._user_subs: dict[str, Subscription] = {}
        #: (hash key, field, value or None to delete): this instance's entries, in order
        self._kv_send, self._kv_receive = trio.open_memory_channel[tuple[str, str, str | None]](KV_QUEUE)
        #: user -> this node's open connections, as last written to `conns:<user>`
        self._conns: dict[str, int] = {}
        #: other instances seen in presence: checked for their lease
        self._known: set[str] = set()
        self._dead: set[str] = set()
        self._catch_up = trio.Event()
        #: set when the bus is back: the loss watch waits on it while a catch-up is owed
        self._bus_back = trio.Event()
        self._stop_watch = lambda: None

    def bind(self, registry: Registry, store: Store | None = None, sessions: Sessions | None = None) -> None:
        """The registry that owns the room actors; the store and sessions let the link find
        the direct messages this node's devices missed while the bus was away."""
        self._registry = registry
        self._store = store
        self._sessions = sessions

    # -- lifetime ---------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe the cluster topic and run the lease, presence writer and loss watchers
        until cancelled (the server cancels it after the rooms have stopped)."""
        cluster = self.bus.subscribe(Topic.cluster(), self._on_cluster_event)
        self._stop_watch = self.bus.watch_state(self._on_state)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._lease_loop)
                nursery.start_soon(self._kv_writer)
                nursery.start_soon(self._loss_watch)
                task_status.started()
        finally:
            self._stop_watch()
            cluster.close()
            for sub in self._user_subs.values():
                sub.close()
            self._user_subs.clear()

    # -- subscriptions ----------------------------------------------------------------------------
    def subscribe_room(self, room: str) -> Subscription:
        """A room actor's subscription to its room's topic (closed when the actor stops)."""
        return self.bus.subscribe(Topic.room(room), self._on_room_event)

    def user_connected(self, user: str) -> None:
        """The user's first connection on this node: hear the direct messages others commit."""
        if user not in self._user_subs:
            self._user_subs[user] = self.bus.subscribe(Topic.user(user), self._on_user_event)

    def user_disconnected(self, user: str) -> None:
        sub = self._user_subs.pop(user, None)
        if sub is not None:
            sub.close()

    # -- connections per user, cluster-wide (PROTOCOL section 2) ----------------------------------
    def connections_changed(self, user: str, count: int) -> None:
        """This node now holds `count` connections of `user` (kept in `conns:<user>`)."""
        if count:
            self._conns[user] = count
        else:
            self._conns.pop(user, None)
        self._write(f"conns:{user}", self.instance, str(count) if count else None)

    async def connections_elsewhere(self, user: str) -> int:
        """The user's connections on the other live nodes (0 when the bus does not answer
        soon: the cap then holds per node, never refusing for want of Redis)."""
        if self.bus.state != "ok":
            return 0
        total = 0
        with trio.move_on_after(SNAPSHOT_TIMEOUT_S):
            try:
                fields = await self.bus.kv.hgetall(f"conns:{user}")
            except BusUnavailable:
                return 0
            for instance, value in fields.items():
                if instance != self.instance and value.isdigit() and await self._alive(instance):
                    total += int(value)
        return total

    # -- rate limits per user, cluster-wide (PROTOCOL section 8 publishes) ------------------------
    async def take_token(self, key: str, *, rate: float, burst: int) -> bool | None:
        """One token of the cluster's bucket `key`; None when the bus does not answer soon
        (the caller then falls back on its own node's bucket: never refuse for want of Redis)."""
        if self.bus.state != "ok":
            return None
        with trio.move_on_after(SNAPSHOT_TIMEOUT_S):
            try:
                return await self.bus.kv.take_token(key, rate=rate, burst=burst)
            except BusUnavailable:
                return None
        return None

    def _write(self, key: str, field: str, value: str | None) -> None:
        try:
            self._kv_send.send_nowait((key, field, value))
        except trio.WouldBlock:
            self._catch_up.set()    # the hashes are behind: rewritten at the next catch-up

    # -- publishing (synchronous, never blocking; a refused publish is a possible loss) ------------
    def _publish(self, topic: Topic, event: BusEvent) -> bool:
        if self.bus.publish(topic, event):
            return True
        self._catch_up.set()        # ours may be missing elsewhere: announce heads when back
        return False

    def _publish_room(self, room: str, event: BusEvent, participants: tuple[str, str] | None) -> bool:
        ok = self._publish(Topic.room(room), event)
        if participants is not None:        # a direct room: both users' devices, wherever
            ok = self._publish(Topic.user(participants[0]), event) and ok
            ok = self._publish(Topic.user(participants[1]), event) and ok
        return ok

    def message(self, room: str, seq: int, event_json: bytes, participants: tuple[str, str] | None) -> bool:
        """A message this node committed (its wire JSON); False when it could not go out (the
        room then announces its head at the next catch-up)."""
        return self._publish_room(room, MessageCommitted(self.instance, room, seq, event_json), participants)

    def head(self, room: str, seq: int, participants: tuple[str, str] | None, since: int | None = None) -> None:
        """The room's messages up to `seq` are stored; `since`: this node's publishes failed
        after that seq."""
        self._publish_room(room, RoomHead(self.instance, room, seq, since), participants)

    def typing(self, room: str, user: str) -> None:
        self.bus.publish(Topic.room(room), TypingRelay(self.instance, room, user))

    def read(self, room: str, user: str, seq: int) -> None:
        self.bus.publish(Topic.room(room), ReadRelay(self.instance, room, user, seq))

    def grant(self, room: str, user: str) -> None:
        self.bus.publish(Topic.cluster(), GrantChanged(self.instance, room, user))

    def presence(self, room: str, user: str, connections: int | None) -> None:
        """This node's figure for `user` in `room` changed: `connections` joined here (0:
        inside the grace period), None: gone from this node."""
        status = "offline" if connections is None else "online"
        self.bus.publish(Topic.room(room), PresenceRelay(self.instance, room, user, status, connections))
        self._write(_presence_key(room), f"{user}|{self.instance}", None if connections is None else str(connections))

    # -- presence ---------------------------------------------------------------------------------
    def saw_instance(self, instance: str) -> bool:
        """Note another instance's presence (always True: a relay is a sign of life).

        An instance whose lease had lapsed may only have been cut off from Redis; when it
        is back it announces its users again, and they count again. Its lease is checked at
        the next renewal: if it is really gone, the instance is forgotten once more.
        """
        if instance != self.instance:
            self._revive(instance)
            self._known.add(instance)
        return True

    def _revive(self, instance: str) -> None:
        if instance in self._dead:
            self._dead.discard(instance)
            log.info("node instance %s: alive again", instance)

    async def presence_snapshot(self, room: str) -> dict[str, dict[str, int]]:
        """The other live instances' users in `room` ({} when the bus does not answer soon)."""
        if self.bus.state != "ok":
            return {}
        entries: dict[str, dict[str, int]] = {}
        key = _presence_key(room)
        with trio.move_on_after(SNAPSHOT_TIMEOUT_S):
            try:
                fields = await self.bus.kv.hgetall(key)
                stale: list[str] = []
                for field, value in fields.items():
                    user, sep, instance = field.rpartition("|")
                    if not sep or instance == self.instance or not value.isdigit():
                        continue
                    if await self._alive(instance):
                        entries.setdefault(user, {})[instance] = int(value)
                    else:
                        stale.append(field)
                if stale:               # a dead instance's leftovers: nobody else removes them
                    await self.bus.kv.hdel(key, *stale)
            except BusUnavailable:
                return {}
        return entries

    async def _alive(self, instance: str) -> bool:
        """Whether another instance holds its lease (asked, then watched by the lease loop)."""
        if instance in self._known:
            return True
        if await self.bus.kv.get(f"lease:{instance}") is None:
            self._dead.add(instance)
            return False
        self._revive(instance)
        self._known.add(instance)
        return True

    async def _kv_writer(self) -> None:
        kv = self.bus.kv
        async for key, field, value in self._kv_receive:
            try:
                if value is None:
                    await kv.hdel(key, field)
                else:
                    await kv.hset(key, field, value)
            except BusUnavailable:
                self._catch_up.set()    # rewritten once the bus is back

    async def _lease_loop(self) -> None:
        """Renew this instance's lease every third of it; find the instances whose lapsed
        (every instance listed in `instances`, not only those seen in presence)."""
        kv = self.bus.kv
        period = self.lease_s / 3
        while True:
            try:
                await self._renew_lease()
                listed = set(await kv.hgetall(INSTANCES_KEY))
                for instance in sorted((listed | self._known) - {self.instance}):
                    if await kv.get(f"lease:{instance}") is not None:
                        self._revive(instance)      # back after being cut off from Redis
                        self._known.add(instance)
                        continue
                    if instance not in self._dead:
                        await self._forget(instance)
                    if instance in listed:
                        await kv.hdel(INSTANCES_KEY, instance)
            except BusUnavailable as exc:
                log.debug("lease renewal: %s", exc)
            await trio.sleep(period)

    async def _renew_lease(self) -> None:
        """Hold this instance's lease for another CHAT_NODE_LEASE and stay listed."""
        await self.bus.kv.set(f"lease:{self.instance}", self.node_id, ttl_s=self.lease_s)
        await self.bus.kv.hset(INSTANCES_KEY, self.instance, self.node_id)
        self._metrics.lease_renewals.inc()

    async def _forget(self, instance: str) -> None:
        log.info("node instance %s: lease gone, its users leave after the grace period", instance)
        self._known.discard(instance)
        self._dead.add(instance)
        if self._registry is not None:
            await self._registry.broadcast(lambda: NodeGoneCmd(instance))

    # -- what other nodes say --------------------------------------------------------------------
    def _on_room_event(self, event: BusEvent) -> None:
        if event.origin == self.instance or self._registry is None:
            return
        room = getattr(event, "room", None)
        if room is not None:
            self._registry.offer(room, RemoteCmd(event))

    def _on_user_event(self, event: BusEvent) -> None:
        """A direct room's message or head: its actor here fans out to this node's devices."""
        if event.origin == self.instance or self._registry is None:
            return
        if isinstance(event, (MessageCommitted, RoomHead)):
            start = event.seq - 1 if isinstance(event, MessageCommitted) else event.since
            self._registry.offer(event.room, RemoteCmd(event), spawn=True, start_below=start)

    def _on_cluster_event(self, event: BusEvent) -> None:
        if event.origin == self.instance or self._registry is None:
            return
        if isinstance(event, GrantChanged):
            self._registry.offer(event.room, GrantCmd(event.user))

    # -- losses -------------------------------------------------------------------------------------
    def _on_state(self, change: StateChange) -> None:
        log.warning("bus %s%s", change.state, f" ({change.reason})" if change.reason else "")
        if change.reconnected:
            self._catch_up.set()
        if change.state == "ok":
            self._bus_back.set()

    async def _loss_watch(self) -> None:
        """Every active room catches up after anything that may have lost events."""
        last = math.inf
        while True:
            with trio.move_on_after(DROP_CHECK_S):
                await self._catch_up.wait()
            stats = self.bus.statistics()
            dropped = stats.receive_dropped + stats.malformed
            if dropped > last:
                self._catch_up.set()
            last = dropped
            if self._catch_up.is_set() and self.bus.state == "ok" and self._registry is not None:
                try:
                    # the lease first: after an outage it may have lapsed, and a node that
                    # hears our presence again must find it (or it forgets us once more)
                    await self._renew_lease()
                except BusUnavailable:
                    await trio.sleep(DROP_CHECK_S)  # down again: the next check tries once more
                    continue
                self._catch_up = trio.Event()
                for user, count in list(self._conns.items()):
                    self._write(f"conns:{user}", self.instance, str(count))
                await self._registry.broadcast(CatchUpCmd)
                await self._direct_catch_up()
            elif self._catch_up.is_set():
                # nothing can be caught up while the bus is down: wait for it to come back
                # (the event stays set, so waiting on it would spin)
                self._bus_back = trio.Event()
                with trio.move_on_after(DROP_CHECK_S):
                    await self._bus_back.wait()

    async def _direct_catch_up(self) -> None:
        """Direct messages other nodes committed while this node may not have heard them
        reach this node's devices: a direct room with an actor here catches up like any
        room, but one without an actor has nobody to notice. So, for every user connected
        here, the store says which direct rooms went past what the user's devices here were
        handed, and those rooms' actors start (or are told) from the lowest such seq; each
        device drops what it has already (`Peer.direct_seen`).

        One store read per user connected here, one user at a time; if the store fails, the
        rest is tried again at the next loss check.
        """
        registry, store, sessions = self._registry, self._store, self._sessions
        if registry is None or store is None or sessions is None:
            return
        starts: dict[str, int] = {}
        for user in list(self._conns):
            devices = list(sessions.connections_of(user))
            if not devices:
                continue
            try:
                rooms = await store.user_rooms(user)
            except ChatError as exc:
                log.warning("direct rooms of %s not readable for a catch-up: %s", user, exc)
                self._catch_up.set()
                return
            for entry in rooms:
                if not entry.room.startswith("dm:"):
                    continue
                seen = min(device.direct_seen(entry.room) for device in devices)
                if entry.seq > seen:
                    starts[entry.room] = min(seen, starts.get(entry.room, seen))
        for room, seen in sorted(starts.items()):
            registry.offer(room, CatchUpCmd(presence=False), spawn=True, start_below=seen)
