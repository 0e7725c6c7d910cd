"""The Bus contract (chat_actors.bus.Bus), checked on every backend (local, redis).

Delivery is asynchronous on both, so "not delivered" is shown by a later marker event on a
subscribed topic arriving while the event in question did not (one publisher keeps its order
on one connection, and the local queue is FIFO).
"""

from __future__ import annotations

import orjson
import pytest
import trio

from chat_actors.bus import (
    Bus,
    BusEvent,
    GrantChanged,
    KeyValue,
    MembershipChanged,
    MessageCommitted,
    PresenceRelay,
    ReadRelay,
    RoomCreated,
    Subscription,
    Topic,
    TypingRelay,
    UserEvent,
    encode,
)

from .conftest import Harness, wait_until

ROOM = Topic.room("lobby")
OTHER = Topic.room("elsewhere")


def message(origin: str, seq: int, room: str = "lobby") -> MessageCommitted:
    event = orjson.dumps({"type": "message", "room": room, "seq": seq, "id": f"c{seq}", "from": "ann",
                          "text": "hi", "meta": None, "ts": 1_700_000_000_000 + seq})
    return MessageCommitted(origin, room, seq, event)


async def active(*subs: Subscription) -> None:
    with trio.fail_after(5):
        for sub in subs:
            await sub.wait_active()


def every_kind(origin: str) -> list[tuple[Topic, BusEvent]]:
    dm = orjson.dumps({"type": "message", "room": "dm:ann:bob", "seq": 3, "id": "x", "from": "ann",
                       "text": "psst", "meta": {"k": [1, 2]}, "ts": 5})
    return [
        (ROOM, message(origin, 1)),
        (ROOM, TypingRelay(origin, "lobby", "ann")),
        (ROOM, ReadRelay(origin, "lobby", "ann", 1)),
        (ROOM, PresenceRelay(origin, "lobby", "ann", "online")),
        (ROOM, PresenceRelay(origin, "lobby", "ann", "offline")),
        (Topic.user("bob"), UserEvent(origin, "bob", dm, room="dm:ann:bob", seq=3)),
        (Topic.user("bob"), UserEvent(origin, "bob", b'{"type":"joined","room":"x"}')),
        (Topic.user("bob"), GrantChanged(origin, "secret", "bob")),
        (Topic.cluster(), RoomCreated(origin, "fresh", "public")),
        (ROOM, MembershipChanged(origin, "lobby", "bob", True)),
        (ROOM, MembershipChanged(origin, "lobby", "bob", False)),
    ]


async def test_the_bus_is_ok_and_satisfies_the_protocol(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        assert isinstance(bus, Bus)
        assert isinstance(bus.kv, KeyValue)
        assert bus.node_id == "n1"
        assert bus.node_topic == Topic.node("n1")
        assert bus.state == "ok"
        stats = bus.statistics()
        assert stats.state == "ok" and stats.dropped == 0 and stats.malformed == 0


async def test_every_event_kind_is_delivered_and_carries_its_origin(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        topics = {ROOM, Topic.user("bob"), Topic.cluster()}
        subs = [bus.subscribe(t, got.append) for t in topics]
        await active(*subs)
        sent = every_kind(bus.node_id)
        for topic, event in sent:
            assert bus.publish(topic, event)
        await wait_until(lambda: len(got) == len(sent), what="every event back")
        assert sorted(map(repr, got)) == sorted(repr(e) for _, e in sent)
        assert all(e.origin == bus.node_id for e in got)  # own events come back, marked as ours
        by_topic = [e for e in got if isinstance(e, (TypingRelay, ReadRelay, MessageCommitted))]
        assert [type(e) for e in by_topic] == [MessageCommitted, TypingRelay, ReadRelay]  # one publisher: in order


async def test_node_topic_delivers_to_its_handlers(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        sub = bus.subscribe(bus.node_topic, got.append)
        await active(sub)
        bus.publish(bus.node_topic, GrantChanged("n1", "r", "u"))
        await wait_until(lambda: got == [GrantChanged("n1", "r", "u")])


async def test_unsubscribe_stops_delivery_at_once(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        first: list[BusEvent] = []
        markers: list[BusEvent] = []
        sub = bus.subscribe(ROOM, first.append)
        marker_sub = bus.subscribe(OTHER, markers.append)
        await active(sub, marker_sub)
        bus.publish(ROOM, message("n1", 1))
        await wait_until(lambda: len(first) == 1)
        bus.publish(ROOM, message("n1", 2))  # queued, not yet dispatched
        sub.close()
        sub.close()  # idempotent
        assert sub.closed and not sub.active
        bus.publish(ROOM, message("n1", 3))
        bus.publish(OTHER, message("n1", 1, room="elsewhere"))
        await wait_until(lambda: len(markers) == 1, what="marker")
        assert [e.seq for e in first] == [1]  # type: ignore[union-attr]


async def test_an_event_nobody_subscribed_to_is_dropped(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        sub = bus.subscribe(ROOM, got.append)
        await active(sub)
        assert bus.publish(OTHER, message("n1", 1, room="elsewhere"))  # accepted, nobody listens
        bus.publish(ROOM, message("n1", 7))
        await wait_until(lambda: len(got) == 1)
        await trio.sleep(0.05)
        assert got == [message("n1", 7)]
        assert bus.statistics().delivered == 1


async def test_subscriptions_are_reference_counted_per_handler(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        markers: list[BusEvent] = []
        a = bus.subscribe(ROOM, got.append)
        b = bus.subscribe(ROOM, got.append)  # the same handler again: still called once per event
        other: list[BusEvent] = []
        c = bus.subscribe(ROOM, other.append)
        m = bus.subscribe(OTHER, markers.append)
        await active(a, b, c, m)
        bus.publish(ROOM, message("n1", 1))
        await wait_until(lambda: len(got) == 1 and len(other) == 1)
        a.close()
        bus.publish(ROOM, message("n1", 2))
        await wait_until(lambda: len(got) == 2 and len(other) == 2)
        b.close()
        c.close()
        assert bus.statistics().topics == 1
        bus.publish(ROOM, message("n1", 3))
        bus.publish(OTHER, message("n1", 1, room="elsewhere"))
        await wait_until(lambda: len(markers) == 1)
        assert len(got) == 2 and len(other) == 2
        with bus.subscribe(ROOM, got.append) as again:  # a topic can come back
            await active(again)
            bus.publish(ROOM, message("n1", 4))
            await wait_until(lambda: len(got) == 3)
        assert again.closed


async def test_malformed_payloads_are_dropped_and_counted(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        sub = bus.subscribe(ROOM, got.append)
        await active(sub)
        bad = [
            b"not json",
            b"[1, 2]",
            b'{"k": "nope", "origin": "x"}',
            b'{"k": "msg", "origin": "x", "room": "lobby"}',
            b'{"k": "msg", "origin": "x", "room": "lobby", "seq": -1, "event": {}}',
            b'{"k": "typing", "origin": "", "room": "lobby", "user": "u"}',
            b"\xff\xfe",
        ]
        for data in bad:
            await harness.inject(bus, ROOM, data)
        await harness.inject(bus, ROOM, encode(TypingRelay("n2", "lobby", "ann")))
        await wait_until(lambda: len(got) == 1)
        assert got == [TypingRelay("n2", "lobby", "ann")]
        assert bus.statistics().malformed == len(bad)
        assert bus.state == "ok"


async def test_a_failing_handler_is_counted_and_others_still_get_events(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []

        def broken(event: BusEvent) -> None:
            raise RuntimeError("handler bug")

        subs = [bus.subscribe(ROOM, broken), bus.subscribe(ROOM, got.append)]
        await active(*subs)
        bus.publish(ROOM, message("n1", 1))
        bus.publish(ROOM, message("n1", 2))
        await wait_until(lambda: len(got) == 2)
        assert bus.statistics().handler_errors == 2


async def test_flood_without_reading_keeps_memory_bounded_and_counts_drops(harness: Harness) -> None:
    capacity, flood = 50, 2000
    async with harness.open("n1", receive_queue=capacity) as bus:
        gate = trio.Event()
        got: list[BusEvent] = []

        async def stalled(event: BusEvent) -> None:  # a consumer that stops reading
            await gate.wait()
            got.append(event)

        sub = bus.subscribe(ROOM, stalled)
        await active(sub)
        accepted = sum(bus.publish(ROOM, message("n1", seq)) for seq in range(1, flood + 1))
        # every event is either refused at publish, dropped at the full inbound queue, queued,
        # or the one the stalled handler holds:
        await wait_until(lambda: bus.statistics().dropped + bus.statistics().receive_queue + 1 >= flood,
                         timeout=10, what="the flood to be accounted for")
        stats = bus.statistics()
        assert stats.receive_queue <= capacity
        assert stats.dropped >= flood - capacity - 1
        assert accepted >= capacity
        gate.set()
        await wait_until(lambda: bus.statistics().receive_queue == 0)
        await trio.sleep(0.1)
        assert capacity <= len(got) <= capacity + 1
        seqs = [e.seq for e in got]  # type: ignore[union-attr]
        assert seqs == sorted(seqs)  # what survives is in order: the newest were dropped
        assert bus.statistics().dropped + len(got) == flood


async def test_wait_active_returns_once_the_topic_is_delivered(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        got: list[BusEvent] = []
        sub = bus.subscribe(ROOM, got.append)
        with trio.fail_after(5):
            await sub.wait_active()
        assert sub.active
        bus.publish(ROOM, message("n1", 1))
        await wait_until(lambda: len(got) == 1)
        sub.close()
        await sub.wait_active()  # closed: returns at once


async def test_publish_refuses_what_is_not_a_bus_event(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        with pytest.raises(TypeError):
            bus.publish(ROOM, "hello")  # type: ignore[arg-type]


async def test_two_nodes_on_one_cluster_see_each_others_events(harness: Harness) -> None:
    if not harness.shared:
        pytest.skip(f"{harness.name} is a single-node bus")
    async with harness.open("n1") as one, harness.open("n2") as two:
        at_one: list[BusEvent] = []
        at_two: list[BusEvent] = []
        await active(one.subscribe(ROOM, at_one.append), two.subscribe(ROOM, at_two.append))
        one.publish(ROOM, message("n1", 1))
        two.publish(ROOM, TypingRelay("n2", "lobby", "bob"))
        await wait_until(lambda: len(at_one) == 2 and len(at_two) == 2)
        assert {e.origin for e in at_one} == {"n1", "n2"} == {e.origin for e in at_two}
        # a node's own topic is its own
        await active(two.subscribe(two.node_topic, at_two.append))
        one.publish(two.node_topic, GrantChanged("n1", "secret", "bob"))
        await wait_until(lambda: len(at_two) == 3)
        assert at_two[-1] == GrantChanged("n1", "secret", "bob")


async def test_another_cluster_prefix_sees_nothing(harness: Harness) -> None:
    if not harness.shared:
        pytest.skip(f"{harness.name} is a single-node bus")
    async with harness.open("n1") as one, harness.open("n2") as two, harness.open_other("n3") as three:
        at_two: list[BusEvent] = []
        at_three: list[BusEvent] = []
        await active(two.subscribe(ROOM, at_two.append), three.subscribe(ROOM, at_three.append))
        one.publish(ROOM, message("n1", 1))
        await wait_until(lambda: len(at_two) == 1)
        three.publish(ROOM, message("n3", 1))  # proves `three` is alive and listening
        await wait_until(lambda: len(at_three) == 1)
        await trio.sleep(0.05)
        assert [e.origin for e in at_three] == ["n3"]
        assert [e.origin for e in at_two] == ["n1"]
        await one.kv.set("lease:n1", "x", ttl_s=10)
        assert await two.kv.get("lease:n1") == "x"
        assert await three.kv.get("lease:n1") is None


async def test_token_bucket_is_shared_by_the_nodes(harness: Harness) -> None:
    """take_token: burst tokens at once, then none until they refill; one bucket per key,
    and (Redis) the same bucket whichever node of the cluster asks."""
    async with harness.open("n1") as one, harness.open("n2") as two:
        other = two if harness.shared else one
        # one token a second: the five calls take milliseconds, so no token comes back meanwhile
        taken = [await (one if i % 2 else other).kv.take_token("rate:ann", rate=1, burst=3) for i in range(5)]
        assert taken == [True, True, True, False, False]
        assert await other.kv.take_token("rate:bob", rate=1, burst=3)      # a bucket of its own
        assert await one.kv.take_token("rate:cy", rate=10, burst=1)
        await trio.sleep(0.15)                                              # > one token's refill
        assert await other.kv.take_token("rate:cy", rate=10, burst=1)
        with pytest.raises(ValueError):
            await one.kv.take_token("rate:ann", rate=0, burst=3)
        with pytest.raises(ValueError):
            await one.kv.take_token("rate:ann", rate=5, burst=0)


async def test_key_value_surface_for_presence(harness: Harness) -> None:
    async with harness.open("n1") as bus:
        kv = bus.kv
        assert await kv.get("lease:n1") is None
        await kv.set("lease:n1", "alive", ttl_s=0.3)
        assert await kv.get("lease:n1") == "alive"
        assert await kv.expire("lease:n1", 0.3)
        await trio.sleep(0.6)
        assert await kv.get("lease:n1") is None  # the lease lapsed
        assert not await kv.expire("lease:n1", 1)

        assert await kv.hincrby("presence:lobby", "ann|n1", 1) == 1
        assert await kv.hincrby("presence:lobby", "ann|n1", 1) == 2
        assert await kv.hincrby("presence:lobby", "bob|n2", 1) == 1
        assert await kv.hgetall("presence:lobby") == {"ann|n1": "2", "bob|n2": "1"}
        assert await kv.hincrby("presence:lobby", "ann|n1", -2) == 0  # reaching 0 removes it
        assert await kv.hgetall("presence:lobby") == {"bob|n2": "1"}
        assert await kv.hdel("presence:lobby", "bob|n2", "nobody") == 1
        assert await kv.hgetall("presence:lobby") == {}
        assert await kv.hgetall("presence:nowhere") == {}
        await kv.hset("presence:lobby", "cy|n3", "4")
        await kv.hset("presence:lobby", "cy|n3", "2")         # a set, not an increment
        assert await kv.hgetall("presence:lobby") == {"cy|n3": "2"}
        assert await kv.hdel("presence:lobby", "cy|n3") == 1

        await kv.hincrby("presence:x", "u|n", 1)
        assert await kv.expire("presence:x", 10)
        await kv.set("plain", "v", ttl_s=10)
        assert await kv.delete("presence:x", "plain", "missing") == 2
        assert await kv.delete() == 0
        with pytest.raises(ValueError):
            await kv.set("k", "v", ttl_s=0)
