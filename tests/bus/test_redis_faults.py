"""The Redis bus under faults, through tests/faultproxy.py, on trio's real clock.

One node ("n1") reaches Redis through the proxy, its peer ("n2") directly, both on this
test's key prefix. Bounds are generous (PROTOCOL section 9 asks for delivery within 5 s of the
bus coming back); the only counts asserted are upper bounds on reconnect attempts.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator

import orjson
import pytest
import trio

from chat_actors.bus import Bus, BusEvent, BusUnavailable, MessageCommitted, StateChange, Topic, open_bus

from faultproxy import FaultProxy

from .conftest import Harness, wait_until

ROOM = Topic.room("lobby")


def message(origin: str, seq: int) -> MessageCommitted:
    return MessageCommitted(origin, "lobby", seq, orjson.dumps({"type": "message", "room": "lobby", "seq": seq}))


@pytest.fixture
async def proxy(redis_harness: Harness) -> AsyncIterator[FaultProxy]:
    parts = urllib.parse.urlsplit(redis_harness.base)  # type: ignore[attr-defined]
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as fault:
        yield fault


def via(harness: Harness, proxy: FaultProxy, node_id: str, **options: object) -> contextlib.AbstractAsyncContextManager[Bus]:
    url = harness.url(**options).replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}", 1)
    assert f":{proxy.port}/" in url
    return open_bus(url, node_id=node_id)


async def receives(peer: Bus, node: Bus, got: list[BusEvent], seq: int, timeout: float = 5.0) -> None:
    """``peer`` publishes seq until ``node`` has it (a publish racing a resubscribe may be lost)."""
    with trio.move_on_after(timeout):
        while not any(getattr(e, "seq", None) == seq for e in got):
            peer.publish(ROOM, message(peer.node_id, seq))
            await trio.sleep(0.1)
        return
    pytest.fail(f"seq {seq} did not reach {node.node_id} within {timeout} s (state {node.state})")


async def test_cut_goes_down_backs_off_and_recovers_with_a_reconnect_notice(
    redis_harness: Harness, proxy: FaultProxy
) -> None:
    async with via(redis_harness, proxy, "n1") as node, redis_harness.open("n2") as peer:
        changes: list[StateChange] = []
        node.watch_state(changes.append)
        got: list[BusEvent] = []
        user_events: list[BusEvent] = []
        subs = [node.subscribe(ROOM, got.append), node.subscribe(Topic.user("ann"), user_events.append)]
        with trio.fail_after(5):
            for sub in subs:
                await sub.wait_active()
        await receives(peer, node, got, 1)

        proxy.cut()
        await wait_until(lambda: node.state == "down", timeout=5, what="state down after the cut")
        assert changes[-1].state == "down" and not changes[-1].reconnected
        assert not any(sub.active for sub in subs)
        dropped = node.statistics().publish_dropped
        assert not node.publish(ROOM, message("n1", 99))  # refused while down, and counted
        assert node.statistics().publish_dropped == dropped + 1
        with pytest.raises(BusUnavailable):
            await node.kv.get("lease:n1")
        late = node.subscribe(Topic.room("late"), got.append)  # subscribed while down

        attempts, accepted = node.statistics().connect_attempts, proxy.accepted
        await trio.sleep(5)
        attempts = node.statistics().connect_attempts - attempts
        assert 1 <= attempts <= 10, f"{attempts} reconnect attempts in 5 s"
        assert proxy.accepted - accepted <= 2 * 10
        assert node.state == "down"

        proxy.restore()
        with trio.fail_after(5):  # PROTOCOL section 9: within 5 s of the bus coming back
            while node.state != "ok":
                await trio.sleep(0.01)
            await receives(peer, node, got, 2, timeout=5)
        assert changes[-1] == StateChange("ok", reconnected=True)
        assert node.statistics().reconnects == 1
        # every topic is subscribed again, the one added while down included
        with trio.fail_after(5):
            for sub in [*subs, late]:
                await sub.wait_active()
        peer.publish(Topic.user("ann"), message("n2", 3))
        peer.publish(Topic.room("late"), message("n2", 4))
        await wait_until(lambda: len(user_events) == 1 and any(getattr(e, "seq", 0) == 4 for e in got))
        assert await node.kv.get("lease:n1") is None  # the key/value surface is back too


async def test_a_black_hole_is_detected_by_probes_and_recovered(redis_harness: Harness, proxy: FaultProxy) -> None:
    # the command timeout is long, so only the probes can notice within the bound below
    async with via(redis_harness, proxy, "n1", probe_interval=0.5, timeout=10) as node, \
            redis_harness.open("n2") as peer:
        changes: list[StateChange] = []
        node.watch_state(changes.append)
        got: list[BusEvent] = []
        sub = node.subscribe(ROOM, got.append)
        with trio.fail_after(5):
            await sub.wait_active()
        await receives(peer, node, got, 1)

        proxy.blackhole()
        await wait_until(lambda: node.state == "down", timeout=5, what="a silent bus to be noticed")
        assert node.statistics().probes_missed >= 2
        assert "probes" in changes[-1].reason
        proxy.restore()
        with trio.fail_after(10):  # the setup through the dead path may take its 10 s timeout
            while node.state != "ok":
                await trio.sleep(0.01)
        await receives(peer, node, got, 2, timeout=5)
        assert changes[-1] == StateChange("ok", reconnected=True)


async def test_a_black_hole_is_detected_with_the_default_timeouts(redis_harness: Harness, proxy: FaultProxy) -> None:
    async with via(redis_harness, proxy, "n1", probe_interval=1, timeout=2) as node, redis_harness.open("n2") as peer:
        got: list[BusEvent] = []
        sub = node.subscribe(ROOM, got.append)
        with trio.fail_after(5):
            await sub.wait_active()
        proxy.blackhole()
        await wait_until(lambda: node.state == "down", timeout=6, what="a silent bus to be noticed")
        proxy.restore()
        await wait_until(lambda: node.state == "ok", timeout=8, what="the bus to come back")
        await receives(peer, node, got, 1)


async def test_redis_absent_at_start_opens_down_and_connects_later(redis_harness: Harness, proxy: FaultProxy) -> None:
    proxy.cut()
    start = trio.current_time()
    async with via(redis_harness, proxy, "n1") as node:
        assert trio.current_time() - start < 5  # the node starts; its bus is down
        assert node.state == "down"
        changes: list[StateChange] = []
        node.watch_state(changes.append)
        got: list[BusEvent] = []
        sub = node.subscribe(ROOM, got.append)
        assert not node.publish(ROOM, message("n1", 1))
        with pytest.raises(BusUnavailable):
            await node.kv.set("lease:n1", "x", ttl_s=10)
        proxy.restore()
        with trio.fail_after(5):
            await sub.wait_active()
        assert node.state == "ok" and changes == [StateChange("ok", reconnected=True)]
        async with redis_harness.open("n2") as peer:
            await receives(peer, node, got, 1)
        await node.kv.set("lease:n1", "x", ttl_s=10)


async def test_closing_while_down_is_prompt(redis_harness: Harness, proxy: FaultProxy) -> None:
    async with via(redis_harness, proxy, "n1") as node:
        proxy.blackhole()
        await wait_until(lambda: node.state == "down", timeout=6)
        start = trio.current_time()
    assert trio.current_time() - start < 5
