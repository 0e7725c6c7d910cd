"""Backoff, probes and the reconnect supervisor, on trio's autojump clock (no real waiting)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
import trio.testing

from chat_actors.bus.events import Probe, decode
from chat_actors.bus.health import Backoff, ProbeMonitor, ProbeTimeout, describe_failure, supervise
from chat_actors.bus.redis import RedisBus, parse_redis_url


def test_backoff_grows_is_capped_and_jittered_within_bounds() -> None:
    backoff = Backoff(0.25, 2.5, jitter=0.25, rng=random.Random(7))
    delays = [backoff.next() for _ in range(20)]
    steps = [0.25, 0.5, 1.0, 2.0] + [2.5] * 16
    for delay, step in zip(delays, steps):
        assert step * 0.75 <= delay <= step
    assert max(delays) <= 2.5
    assert len(set(delays)) > 10  # jittered: nodes do not retry in lock step
    backoff.reset()
    assert 0.1875 <= backoff.next() <= 0.25


@pytest.mark.parametrize("kwargs", [dict(base=0, cap=1), dict(base=2, cap=1), dict(base=1, cap=2, factor=0.5),
                                    dict(base=1, cap=2, jitter=1.0)])
def test_backoff_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_probe_monitor_two_quiet_misses_in_a_row_mean_down() -> None:
    monitor = ProbeMonitor(misses=2)
    first = monitor.start()
    assert monitor.waiting
    assert monitor.seen(first) and not monitor.waiting
    second = monitor.due()  # the previous came back: no miss
    assert monitor.quiet_in_row == 0
    third = monitor.due()  # `second` did not come back and nothing else arrived: one miss
    assert monitor.quiet_in_row == 1
    assert monitor.seen(second)  # late but back: the bus is slow, not silent
    assert monitor.quiet_in_row == 0 and monitor.waiting  # `third` is still out
    monitor.due()
    with pytest.raises(ProbeTimeout, match="nothing else arrived"):
        monitor.due()
    assert monitor.missed_total == 3
    assert monitor.sent == 4 and third == 3  # the raising call sends nothing


def test_probe_monitor_gives_a_probe_behind_a_backlog_more_time() -> None:
    monitor = ProbeMonitor(misses=2, patience=5)
    monitor.start()
    for _ in range(4):  # other messages keep arriving, the probes are queued behind them
        monitor.traffic()
        monitor.due()
    assert monitor.quiet_in_row == 0 and monitor.missing_in_row == 4
    monitor.traffic()
    with pytest.raises(ProbeTimeout, match="too far behind"):
        monitor.due()


def test_probe_monitor_traffic_then_silence_is_down_after_two_quiet_intervals() -> None:
    monitor = ProbeMonitor(misses=2, patience=10)
    monitor.start()
    monitor.traffic()
    monitor.due()  # late, but traffic: not quiet
    monitor.due()  # quiet 1
    with pytest.raises(ProbeTimeout):
        monitor.due()  # quiet 2


def test_probe_monitor_ignores_probes_of_other_sessions() -> None:
    monitor = ProbeMonitor(misses=2)
    old = monitor.start()
    monitor.due()
    new = monitor.start()  # reconnected
    assert not monitor.seen(old)  # a stale probe from before proves nothing
    assert not monitor.seen(new + 5)  # never sent
    assert monitor.waiting and monitor.seen(new)
    for bad in (dict(misses=0), dict(misses=3, patience=2)):
        with pytest.raises(ValueError):
            ProbeMonitor(**bad)


def test_describe_failure_flattens_groups() -> None:
    group = ExceptionGroup("x", [ConnectionError("refused"), ExceptionGroup("y", [TimeoutError()])])
    assert describe_failure(group) == "ConnectionError: refused; TimeoutError"


async def test_supervise_never_busy_loops_while_the_backend_is_gone(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []
    downs: list[str] = []

    async def failing(mark_up: Callable[[], None]) -> None:
        await trio.sleep(0)  # a refused connection fails at once
        raise ConnectionError("refused")

    with trio.move_on_after(60):
        await supervise(failing, Backoff(0.25, 2.5, rng=random.Random(1)),
                        on_attempt=lambda: attempts.append(trio.current_time()), on_down=downs.append, stable_s=2.5)
    assert 24 <= len(attempts) <= 35  # about one every 2.5 s after the first few
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert min(gaps) >= 0.18 and max(gaps) <= 2.5
    assert sum(1 for t in attempts if t - attempts[0] <= 5) <= 10
    assert downs[0] == "ConnectionError: refused"


async def test_supervise_resets_backoff_only_after_a_stable_session(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []
    plan = iter(["fail", "fail", "fail", "fail", "stable", "fail", "flap", "flap", "flap"])

    async def session(mark_up: Callable[[], None]) -> None:
        step = next(plan, "fail")
        if step == "stable":
            mark_up()
            await trio.sleep(10)
        elif step == "flap":
            mark_up()
            await trio.sleep(0.1)
        raise ConnectionError(step)

    with trio.move_on_after(40):
        await supervise(session, Backoff(0.25, 2.5, jitter=0.0001), on_attempt=lambda: attempts.append(trio.current_time()),
                        on_down=lambda reason: None, stable_s=2.5)
    gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
    assert gaps[:4] == [0.2, 0.5, 1.0, 2.0]  # growing while it fails
    assert gaps[4] == 10.2  # the stable session ran 10 s, then the backoff started over (0.25)
    assert gaps[5] == 0.5 and gaps[6] == 1.1 and gaps[7] == 2.1  # flapping keeps backing off


async def test_supervise_passes_cancellation_through(autojump_clock: trio.testing.MockClock) -> None:
    async def forever(mark_up: Callable[[], None]) -> None:
        mark_up()
        await trio.sleep_forever()

    with trio.move_on_after(5) as scope:
        await supervise(forever, Backoff(), on_attempt=lambda: None, on_down=lambda r: None, stable_s=1)
    assert scope.cancelled_caught


class FakeClient:
    """Stands in for the coredis client in the prober: PUBLISH either echoes or vanishes."""

    def __init__(self, bus: RedisBus, echo: Callable[[int], bool]) -> None:
        self.bus = bus
        self.echo = echo

    async def publish(self, channel: bytes, data: bytes) -> int:
        await trio.sleep(0.001)
        probe = decode(data)
        assert isinstance(probe, Probe) and channel == self.bus.channel(self.bus.node_topic)
        if self.echo(probe.n):
            assert self.bus._take_probe(data)
        return 1


async def test_prober_stays_quiet_while_probes_come_back(autojump_clock: trio.testing.MockClock) -> None:
    bus = RedisBus("n1", parse_redis_url("redis://127.0.0.1/0?probe_interval=1"))
    client = FakeClient(bus, echo=lambda n: True)
    await bus._first_probe(client)  # type: ignore[arg-type]
    with trio.move_on_after(30):
        await bus._prober(client)  # type: ignore[arg-type]
    assert bus.statistics().probes_sent >= 30 and bus.statistics().probes_missed == 0


async def test_prober_declares_a_silent_bus_down_after_two_missed_probes(autojump_clock: trio.testing.MockClock) -> None:
    bus = RedisBus("n1", parse_redis_url("redis://127.0.0.1/0?probe_interval=1&probe_misses=2"))
    silent_from = 5
    client = FakeClient(bus, echo=lambda n: n < silent_from)
    await bus._first_probe(client)  # type: ignore[arg-type]
    start = trio.current_time()
    with pytest.raises(ProbeTimeout):
        await bus._prober(client)  # type: ignore[arg-type]
    # probes 1-4 came back; 5 and 6 did not: down at the 6th interval check
    assert 5.9 <= trio.current_time() - start <= 6.1
    assert bus.statistics().probes_missed == 2


async def test_prober_notices_a_dead_publishing_side_while_traffic_still_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = RedisBus("n1", parse_redis_url("redis://127.0.0.1/0?probe_interval=1&timeout=3"))
    await bus._first_probe(FakeClient(bus, echo=lambda n: True))  # type: ignore[arg-type]

    class Stuck:
        async def publish(self, channel: bytes, data: bytes) -> int:
            await trio.sleep_forever()
            raise AssertionError  # pragma: no cover

    async def other_nodes_events() -> None:
        while True:
            bus._monitor.traffic()
            await trio.sleep(0.1)

    start = trio.current_time()
    with pytest.RaisesGroup(pytest.RaisesExc(TimeoutError, match="PUBLISH")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_nodes_events)
            await bus._prober(Stuck())  # type: ignore[arg-type]
    assert 3 <= trio.current_time() - start <= 5.5
