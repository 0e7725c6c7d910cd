"""A bounded hand-off between exactly one sending and one receiving task.

Each connection passes its inbound messages from the reader task to the handler task.
A trio memory channel does that job for any number of tasks and costs about 1.5 KiB per
connection even when empty (a deque block and two ordered dicts of waiters); with one task
on each side, a list and two task slots do, which matters at tens of thousands of idle
connections. Semantics follow the memory channel: closing the send side lets the receiver
drain what is buffered and then raises EndOfChannel; closing the receive side discards the
buffer and makes the sender's send raise BrokenResourceError.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import outcome
import trio
from trio.lowlevel import Abort, Task, cancel_shielded_checkpoint, checkpoint_if_cancelled, current_task

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("_ended", "_dropped", "_items", "_limit", "_pending", "_receiver", "_sender")

    def __init__(self, limit: int) -> None:
        self._items: list[T] = []
        self._limit = limit
        self._receiver: Task | None = None     # waiting in receive()
        self._sender: Task | None = None       # waiting in send(), with _pending
        self._pending: T | None = None
        self._ended = False                    # send side closed
        self._dropped = False                  # receive side closed

    def put_nowait(self, item: T) -> bool:
        """Hand over without a schedule point; False when full (then `await send`).

        Raises like `send` once either side is closed.
        """
        if self._dropped:
            raise trio.BrokenResourceError
        if self._ended:
            raise trio.ClosedResourceError
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Value(item))
            return True
        if len(self._items) < self._limit:
            self._items.append(item)
            return True
        return False

    async def send(self, item: T) -> None:
        await checkpoint_if_cancelled()
        if not self.put_nowait(item):
            self._sender = current_task()
            self._pending = item

            def abort(_: object) -> Abort:
                self._sender = None
                self._pending = None
                return Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            return
        await cancel_shielded_checkpoint()

    async def receive(self) -> T:
        await checkpoint_if_cancelled()
        if self._items:
            item = self._items.pop(0)
            sender = self._sender
            if sender is not None:              # room again: the waiting message goes in
                self._items.append(self._pending)  # type: ignore[arg-type]
                self._sender = None
                self._pending = None
                trio.lowlevel.reschedule(sender, outcome.Value(None))
            await cancel_shielded_checkpoint()
            return item
        if self._dropped:
            raise trio.ClosedResourceError
        if self._ended:
            await cancel_shielded_checkpoint()
            raise trio.EndOfChannel
        self._receiver = current_task()

        def abort(_: object) -> Abort:
            self._receiver = None
            return Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def close_send(self) -> None:
        """No more messages: the receiver gets the buffered ones, then EndOfChannel."""
        self._ended = True
        receiver = self._receiver
        if receiver is not None:                # waiting means nothing is buffered
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Error(trio.EndOfChannel()))

    def close_receive(self) -> None:
        """Discard the buffer; a waiting or later send raises BrokenResourceError."""
        self._dropped = True
        self._items.clear()
        sender = self._sender
        if sender is not None:
            self._sender = None
            self._pending = None
            trio.lowlevel.reschedule(sender, outcome.Error(trio.BrokenResourceError()))
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Error(trio.ClosedResourceError()))
