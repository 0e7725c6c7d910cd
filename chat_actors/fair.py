"""FairLimiter: a capacity limiter that shares its slots out per key, round-robin.

Why: every connect reads the store (welcome, offline direct messages), and so do `join
since` replays and history pages. With a plain limiter one user opening hundreds of
connections queues hundreds of reads ahead of everybody else's welcome. Here each key (a
user) holds at most `per_key` slots, and when a slot frees it goes to the next *key* in
turn (the least recently served first), not to the next caller: a newcomer waits for at
most one read per other busy user, however deep their queues are.

Pure trio, no threads: the slots are held around an `await store.read(...)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import attrs
import trio


@attrs.frozen
class FairLimiterStats:
    in_use: int
    waiting: int
    waiting_keys: int


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class FairLimiter:
    """At most `total` holders at once, at most `per_key` of them for one key."""

    def __init__(self, total: int, per_key: int) -> None:
        if total < 1 or per_key < 1:
            raise ValueError("total and per_key must be >= 1")
        self.total = total
        self.per_key = per_key
        self._in_use = 0
        self._held: dict[Hashable, int] = {}
        #: key -> its waiters in arrival order
        self._waiting: dict[Hashable, deque[_Waiter]] = {}
        #: key -> when it was last given a slot (a counter): the least recently served goes next
        self._served: dict[Hashable, int] = {}
        self._turn = 0

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold one slot for `key` for the body of the `async with`.

        Waits while all slots are taken or `key` holds `per_key`. Cancellation while waiting
        leaves no trace (a slot granted just before the cancel is handed on).
        """
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: Hashable) -> None:
        if not self._waiting and self._in_use < self.total and self._held.get(key, 0) < self.per_key:
            self._take(key)
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter()
        self._waiting.setdefault(key, deque()).append(waiter)
        self._dispatch()    # a free slot may be ours if only capped keys were waiting
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._release(key)
            else:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[key]
                        if key not in self._held:
                            self._served.pop(key, None)
            raise

    def _take(self, key: Hashable) -> None:
        self._in_use += 1
        self._held[key] = self._held.get(key, 0) + 1
        self._turn += 1
        self._served[key] = self._turn

    def _release(self, key: Hashable) -> None:
        self._in_use -= 1
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
            if key not in self._waiting:
                del self._served[key]       # forgotten: it comes back as a newcomer
        self._dispatch()

    def _dispatch(self) -> None:
        """Give free slots to waiting keys, the least recently served (under its cap) first."""
        while self._in_use < self.total and self._waiting:
            held, served = self._held, self._served
            eligible = [k for k in self._waiting if held.get(k, 0) < self.per_key]
            if not eligible:
                return      # every waiting key is at its own cap
            key = min(eligible, key=lambda k: served.get(k, 0))
            queue = self._waiting[key]
            waiter = queue.popleft()
            if not queue:
                del self._waiting[key]
            self._take(key)
            waiter.granted = True
            waiter.event.set()

    def statistics(self) -> FairLimiterStats:
        return FairLimiterStats(
            in_use=self._in_use,
            waiting=sum(len(q) for q in self._waiting.values()),
            waiting_keys=len(self._waiting),
        )


def client_reads() -> FairLimiter:
    """The limiter for store reads made on behalf of clients: as many slots as SQLite's
    reader connections (4), at most 2 of them for one user."""
    return FairLimiter(total=4, per_key=2)
