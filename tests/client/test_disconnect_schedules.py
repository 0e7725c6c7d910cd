"""Property: whatever the disconnects, a room's stream equals its history and every send
lands once. Hypothesis draws the schedule (when, which fault, how long, whose connection);
each example runs against a real server with the fault proxy in front of it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from faultproxy import FaultProxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_actors.client import open_chat
from integration.client import register

from .helpers import FAST, Collector, assert_stream_is_history, full_history, ws_port, ws_via

_examples = itertools.count(1)
TOTAL = 60

faults = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=TOTAL // 3),  # acks since the previous fault
        st.sampled_from(["cut", "silence", "blackhole"]),
        st.sampled_from([0.0, 0.05, 0.3]),  # outage before restore()
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture
def server_overrides():
    return {"rate_per_second": 5000.0, "rate_burst": 5000}


@asynccontextmanager
async def running_server(config: Any) -> AsyncIterator[Any]:
    """A server for one example: each example runs in a trio run of its own, so the async
    `server` fixture (made in another run) cannot serve it."""
    from chat_actors.server import serve

    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, config)
        try:
            yield running.info
        finally:
            running.request_shutdown()
            with trio.fail_after(30):
                await running.wait_stopped()


@pytest.mark.timeout(600)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(schedule=faults, behind_proxy=st.sampled_from(["consumer", "producer", "both"]))
async def test_any_disconnect_schedule_keeps_the_stream_whole(server_config, schedule, behind_proxy):
    n = next(_examples)  # the database outlives an example: fresh names each time
    room = f"room{n}"
    options = {"backoff": FAST, "keepalive": 0.3, "connect_timeout": 1.0}
    async with running_server(server_config) as server, FaultProxy(upstream_port=ws_port(server.ws_url)) as proxy:
        consumer_token = await register(server.http_url, f"reader{n}")
        producer_token = await register(server.http_url, f"writer{n}")
        via = {who: ws_via(proxy.port) if behind_proxy in (who, "both") else server.ws_url
               for who in ("consumer", "producer")}
        async with open_chat(via["consumer"], token=consumer_token, **options) as consumer, \
                open_chat(via["producer"], token=producer_token, **options) as producer:
            await consumer.join(room)
            await producer.join(room)
            collector = Collector(consumer, room)
            acked: list[str] = []

            async def produce() -> None:
                for i in range(TOTAL):
                    acked.append((await producer.send(room, f"m{i}", id=f"{room}-{i}")).id)
                    await trio.sleep(0.002)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collector.run)
                nursery.start_soon(produce)
                target = 0
                for after, fault, outage in schedule:
                    target = min(TOTAL, target + after)
                    with trio.fail_after(60):
                        while len(acked) < target:
                            await trio.sleep(0.005)
                    getattr(proxy, {"cut": "cut", "silence": "silence_replies", "blackhole": "blackhole"}[fault])()
                    await trio.sleep(outage)
                    proxy.restore()
                await collector.until(TOTAL, timeout=120)
                nursery.cancel_scope.cancel()
            history = await full_history(producer, room)
            assert_stream_is_history(collector.messages, history)
            assert [m.id for m in history] == [f"{room}-{i}" for i in range(TOTAL)]
        # the faults did hit: the chats behind the proxy came back through it at least once
        assert proxy.accepted > (2 if behind_proxy == "both" else 1)
