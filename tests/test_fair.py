"""FairLimiter: per-key caps and round-robin hand-over, on trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chat_actors.fair import FairLimiter


async def _worker(limiter: FairLimiter, key: str, log: list[str], hold_s: float = 1.0) -> None:
    async with limiter.hold(key):
        log.append(key)
        await trio.sleep(hold_s)


async def test_a_newcomer_waits_for_one_turn_not_for_a_whole_queue() -> None:
    limiter = FairLimiter(total=2, per_key=2)
    log: list[str] = []
    release = [trio.Event() for _ in range(51)]

    async def flood() -> None:
        async with limiter.hold("flood"):
            turn = len(log)
            log.append("flood")
            await release[turn].wait()

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_worker, limiter, "alice", log, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["flood", "flood"]
        release[0].set()        # one slot frees: it is alice's, not the next of 48 floods
        await trio.testing.wait_all_tasks_blocked()
        assert log[:3] == ["flood", "flood", "alice"]
        for event in release:
            event.set()
    assert log.count("flood") == 50


async def test_per_key_cap_leaves_slots_to_others(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FairLimiter(total=4, per_key=1)
    seen_max: dict[str, int] = {}
    held: dict[str, int] = {}

    async def worker(key: str) -> None:
        async with limiter.hold(key):
            held[key] = held.get(key, 0) + 1
            seen_max[key] = max(seen_max.get(key, 0), held[key])
            assert limiter.statistics().in_use <= 4
            await trio.sleep(1)
            held[key] -= 1

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(worker, "flood")
            nursery.start_soon(worker, f"user{i % 3}")
    assert seen_max["flood"] == 1 and all(v == 1 for v in seen_max.values())
    assert limiter.statistics().in_use == 0 and limiter.statistics().waiting == 0


async def test_round_robin_between_busy_keys() -> None:
    limiter = FairLimiter(total=1, per_key=1)
    log: list[str] = []
    gate = trio.Event()

    async def first() -> None:
        async with limiter.hold("a"):
            log.append("a")
            await gate.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        for key in ["a"] * 2 + ["b"] * 3 + ["c"] * 3:
            nursery.start_soon(_worker, limiter, key, log, 0.0)
            await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert log == ["a", "b", "c", "a", "b", "c", "a", "b", "c"]


async def test_cancelled_waiters_leave_no_trace(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FairLimiter(total=1, per_key=1)
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_worker, limiter, "a", log, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1):
            async with limiter.hold("b"):
                pytest.fail("the slot is held by a")
        assert limiter.statistics().waiting == 0
    async with limiter.hold("c"):
        assert limiter.statistics().in_use == 1
    assert limiter.statistics().in_use == 0


async def test_a_slot_granted_to_a_cancelled_waiter_is_handed_on(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FairLimiter(total=1, per_key=1)
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        holder = trio.CancelScope()

        async def hold_then_release() -> None:
            with holder:
                async with limiter.hold("a"):
                    await trio.sleep_forever()

        nursery.start_soon(hold_then_release)
        await trio.testing.wait_all_tasks_blocked()
        waiting_b = trio.CancelScope()

        async def wait_b() -> None:
            with waiting_b:
                async with limiter.hold("b"):
                    log.append("b")

        nursery.start_soon(wait_b)
        nursery.start_soon(_worker, limiter, "c", log)
        await trio.testing.wait_all_tasks_blocked()
        holder.cancel()          # the slot goes to b ...
        waiting_b.cancel()       # ... which is cancelled before it runs: c must get it
    assert log == ["c"]
    assert limiter.statistics().in_use == 0
