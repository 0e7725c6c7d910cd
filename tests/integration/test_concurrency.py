"""PROTOCOL section 5 "Order" and "Echo filtering" under concurrency: several senders and
receivers in one room on a seeded random schedule; every receiver sees every message exactly
once, in seq order, without gaps, and no sender sees its own."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import pytest
import trio

SENDERS = 4
RECEIVERS = 4
PER_SENDER = 40


@pytest.fixture
def server_overrides():
    return {"rate_per_second": 100000, "rate_burst": 100000}


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_senders_and_receivers_see_every_message_once_in_order(server, seed):
    rng = random.Random(seed)
    names = [f"user{i}" for i in range(SENDERS + RECEIVERS)]
    tokens = {n: await server.user(n) for n in names}
    total = SENDERS * PER_SENDER
    async with AsyncExitStack() as stack:
        # one sender shares its user with a receiver (another device of the same user)
        senders = [await stack.enter_async_context(server.connect(tokens[names[i]])) for i in range(SENDERS)]
        receivers = [
            await stack.enter_async_context(server.connect(tokens[names[SENDERS + i]])) for i in range(RECEIVERS - 1)
        ]
        receivers.append(await stack.enter_async_context(server.connect(tokens[names[0]])))
        for c in senders + receivers:
            await c.join("busy")

        acks: dict[tuple[str, str], int] = {}
        seen: list[list[dict]] = [[] for _ in receivers]
        sender_own: list[list[dict]] = [[] for _ in senders]
        schedules = [[rng.random() * 0.01 for _ in range(PER_SENDER)] for _ in senders]

        async def send_all(idx: int) -> None:
            c = senders[idx]
            for j, pause in enumerate(schedules[idx]):
                await c.send({"type": "send", "room": "busy", "id": f"s{idx}-{j}", "text": f"{idx}/{j}"})
                if pause > 0.005:
                    await trio.sleep(pause)
            got = 0
            while got < PER_SENDER:
                ev = await c.recv(timeout=30)
                if ev["type"] == "ack":
                    acks[(c.user, ev["id"])] = ev["seq"]
                    got += 1
                elif ev["type"] == "message":
                    sender_own[idx].append(ev)  # other senders' messages are fine; own are not

        async def receive_all(idx: int) -> None:
            c = receivers[idx]
            while len(seen[idx]) < total:
                ev = await c.expect("message", room="busy", timeout=30)
                seen[idx].append(ev)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(SENDERS):
                    nursery.start_soon(send_all, i)
                for i in range(RECEIVERS):
                    nursery.start_soon(receive_all, i)

        assert sorted(acks.values()) == list(range(1, total + 1))
        for idx, events in enumerate(seen):
            assert [e["seq"] for e in events] == list(range(1, total + 1)), f"receiver {idx}"
            for e in events:
                assert acks[(e["from"], e["id"])] == e["seq"]
        for idx, events in enumerate(sender_own):
            me = senders[idx].user
            assert all(e["from"] != me or not e["id"].startswith(f"s{idx}-") for e in events), f"sender {idx} got its own"
        # the receiver sharing user0 got user0's messages (the sender's other device)
        assert sum(1 for e in seen[-1] if e["from"] == names[0]) == PER_SENDER
        # nothing extra arrives afterwards
        for c in receivers:
            await c.assert_silent(0.2, ignore=("presence", "typing", "read"))


async def _sender(conn, room: str, count: int, done: trio.Event) -> None:
    """Send `count` messages as fast as acks allow (a window of 10 in flight)."""
    in_flight = 0
    sent = 0
    acked = 0
    while acked < count:
        while sent < count and in_flight < 10:
            await conn.send({"type": "send", "room": room, "id": f"live{sent}", "text": f"live {sent}"})
            sent += 1
            in_flight += 1
        await conn.expect("ack", timeout=30)
        acked += 1
        in_flight -= 1
    done.set()


@pytest.mark.parametrize("since", [0, 150, None])
async def test_join_during_live_traffic_no_gap_no_duplicate(server, since):
    """A replay (or a plain join) racing live sends: what the joiner sees is consecutive seqs,
    replay first, then `joined`, then live messages above it."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice) as a:
        await a.join("live")
        for i in range(300):
            await a.send({"type": "send", "room": "live", "id": f"pre{i}", "text": "pre"})
        for _ in range(300):
            await a.expect("ack", timeout=30)
        done = trio.Event()
        async with server.connect(bob) as b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sender, a, "live", 300, done)
                await trio.sleep(0.01)
                cmd = {"type": "join", "room": "live"}
                if since is not None:
                    cmd["since"] = since
                await b.send(cmd)
                before_joined: list[int] = []
                while True:
                    ev = await b.recv(timeout=30)
                    if ev["type"] == "joined":
                        joined = ev
                        break
                    if ev["type"] == "message":
                        before_joined.append(ev["seq"])
            after: list[int] = []
            with trio.move_on_after(1.0):
                while True:
                    ev = await b.recv(timeout=30)
                    if ev["type"] == "message":
                        after.append(ev["seq"])
    assert joined["recovered"] is True
    if since is None:
        assert before_joined == []
    else:
        assert before_joined == list(range(since + 1, joined["seq"] + 1))
    assert after == list(range(joined["seq"] + 1, 601)), (joined["seq"], after[:5], after[-5:])
