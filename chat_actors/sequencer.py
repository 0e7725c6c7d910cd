"""The sequencer: one room's messages go to this node's connections strictly in seq order.

Why it exists: in a cluster a room's seq is assigned by the store, and the messages of one
room reach a node by two roads: its own commits (another node may have taken the seq
before ours) and the bus (which may lose, duplicate or reorder). The room actor feeds both
into one Sequencer, which hands out only the next seq after the last delivered one, drops
anything at or below it, and holds anything above it back until the missing seqs come or
the hold expires; then the actor reads the gap from the store (`gap`, `filled`). So no
client ever sees a gap, a duplicate or a reorder, whatever the bus does.

On one node the actor's own commits are always the next seqs, so `offer_batch` returns its
input unchanged after one comparison per message: the single-node hot path pays nothing.

Pure: no trio, no I/O; time is passed in, so it is tested without a clock.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["HOLD_S", "MAX_HELD", "Sequencer"]

P = TypeVar("P")

#: How long an early message waits for the missing ones before the gap is read from the store.
#: On a healthy bus they come in milliseconds, but a node whose CPU is saturated hears them
#: late, and a fill is a store read that loads it further: a short hold turned overload into
#: a storm of fills (hundreds a second in the two-node bench). Losses the bus notices (a
#: reconnect, a full queue) are read at once; only a silent loss waits this long.
HOLD_S = 0.25
#: Early messages kept at most; beyond it the newest are dropped (the store read brings them).
MAX_HELD = 4096

#: (frame, seq, sender): the frame to write, its seq, and the local connection that sent it
#: (None when it came from elsewhere): the sender gets no copy of its own message.
Item = tuple[bytes, int, P]


class Sequencer(Generic[P]):
    """`delivered` = the highest seq handed to local connections; see the module docstring."""

    __slots__ = ("delivered", "head", "fill_at", "_held", "_hold_s")

    def __init__(self, delivered: int = 0, *, hold_s: float = HOLD_S) -> None:
        self.delivered = delivered
        #: the highest seq known to exist (held, noted, or delivered)
        self.head = delivered
        #: when the gap (delivered, head] must be read from the store; None = no gap
        self.fill_at: float | None = None
        self._held: dict[int, Item[P]] = {}
        self._hold_s = hold_s

    @property
    def held(self) -> int:
        return len(self._held)

    def start_at(self, seq: int) -> list[Item[P]]:
        """Adopt the store's head when the actor (re)loads its room (nobody joined could
        have missed what came before); never moves back. Returns held items now due."""
        ready: list[Item[P]] = []
        if seq > self.delivered:
            self.delivered = seq
            self.head = max(self.head, seq)
            for old in [s for s in self._held if s <= seq]:
                del self._held[old]
            self._release(ready)
            if self.head <= self.delivered:
                self.fill_at = None
        return ready

    def offer_batch(self, items: list[Item[P]], now: float) -> list[Item[P]]:
        """Items in seq order, ready to deliver now; the rest is held or dropped."""
        if not self._held:
            expected = self.delivered + 1
            for _, seq, _ in items:
                if seq != expected:
                    break
                expected += 1
            else:                       # the usual case: exactly the next seqs
                if items:
                    self.delivered = expected - 1
                    if self.head < self.delivered:
                        self.head = self.delivered
                return items
        ready: list[Item[P]] = []
        for item in items:
            self._take(item)
        self._release(ready)
        self._schedule(now)
        return ready

    def offer(self, item: Item[P], now: float) -> list[Item[P]]:
        return self.offer_batch([item], now)

    def note_head(self, seq: int, now: float, *, at_once: bool = False) -> None:
        """A message with this seq exists (a bus event that could not be queued, a retry of
        a message whose first commit landed, a reconnect): make sure it gets delivered."""
        if seq > self.head:
            self.head = seq
        if self.head > self.delivered:
            if at_once:
                self.fill_at = now
            else:
                self._schedule(now)

    def gap(self, now: float) -> tuple[int, int] | None:
        """(after, upto): the seqs to read from the store now, or None when nothing is due."""
        if self.fill_at is None or now < self.fill_at or self.head <= self.delivered:
            return None
        return self.delivered, self.head

    def filled(self, items: list[Item[P]], now: float, *, complete: bool) -> list[Item[P]]:
        """Adopt what the store returned for `gap()` (in seq order); ready items out.

        `complete`: the read reached `upto` (not cut by its page limit). When the store had
        less than the gap (a page limit), the rest is asked for again at once.
        """
        for item in items:
            if item[1] not in self._held:
                self._take(item)
        ready: list[Item[P]] = []
        self._release(ready)
        self.fill_at = None
        if self.head > self.delivered:
            self.fill_at = now if not complete or not self._held else now + self._hold_s
        return ready

    # -- internals ------------------------------------------------------------------------------
    def _take(self, item: Item[P]) -> None:
        seq = item[1]
        if seq <= self.delivered or seq in self._held:
            return
        if len(self._held) >= MAX_HELD:      # dropped: the store read brings it
            if seq > self.head:
                self.head = seq
            return
        self._held[seq] = item
        if seq > self.head:
            self.head = seq

    def _release(self, ready: list[Item[P]]) -> None:
        held = self._held
        nxt = self.delivered + 1
        while nxt in held:
            ready.append(held.pop(nxt))
            nxt += 1
        self.delivered = nxt - 1

    def _schedule(self, now: float) -> None:
        if self.head <= self.delivered:
            self.fill_at = None
        elif self.fill_at is None:
            self.fill_at = now + self._hold_s
