"""Mailbox: the reader -> handler hand-off of every connection (real trio tasks)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chat_actors.mailbox import Mailbox


async def test_order_and_backpressure() -> None:
    box: Mailbox[int] = Mailbox(2)
    sent: list[int] = []

    async def producer() -> None:
        for i in range(5):
            await box.send(i)
            sent.append(i)
        box.close_send()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1]                    # the third send waits for room
        got = [await box.receive() for _ in range(5)]
        with pytest.raises(trio.EndOfChannel):
            await box.receive()
    assert got == [0, 1, 2, 3, 4]


async def test_waiting_receiver_gets_item_then_end() -> None:
    box: Mailbox[str] = Mailbox(1)
    got: list[str] = []

    async def consumer() -> None:
        try:
            while True:
                got.append(await box.receive())
        except trio.EndOfChannel:
            got.append("end")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        await box.send("a")
        await trio.testing.wait_all_tasks_blocked()
        box.close_send()
    assert got == ["a", "end"]


async def test_close_receive_breaks_waiting_sender_and_receiver() -> None:
    box: Mailbox[int] = Mailbox(1)
    await box.send(1)
    outcome: list[str] = []

    async def blocked_send() -> None:
        try:
            await box.send(2)
        except trio.BrokenResourceError:
            outcome.append("broken")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_send)
        await trio.testing.wait_all_tasks_blocked()
        box.close_receive()
    assert outcome == ["broken"]
    with pytest.raises(trio.ClosedResourceError):
        await box.receive()                      # the buffer was discarded
    with pytest.raises(trio.BrokenResourceError):
        await box.send(3)

    waiting: Mailbox[int] = Mailbox(1)

    async def blocked_receive() -> None:
        try:
            await waiting.receive()
        except trio.ClosedResourceError:
            outcome.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_receive)
        await trio.testing.wait_all_tasks_blocked()
        waiting.close_receive()
    assert outcome == ["broken", "closed"]


async def test_cancelled_waits_leave_the_box_usable() -> None:
    box: Mailbox[int] = Mailbox(1)
    with trio.move_on_after(0.05):
        await box.receive()                      # cancelled while waiting
    await box.send(1)
    with trio.move_on_after(0.05):
        await box.send(2)                        # cancelled while the box is full: 2 is not kept
    assert await box.receive() == 1
    await box.send(3)
    assert await box.receive() == 3
