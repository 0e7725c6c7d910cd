"""Group commit: concurrent commits share one worker-thread hop and one transaction.

With many busy rooms, the fixed cost of a commit (a thread hop plus BEGIN ... COMMIT, and
an fsync under ``synchronous=full``) dominates the work of writing a batch. Commits that
arrive while a transaction runs therefore wait and then go to the backend together.

Leader/follower, with no background task: the caller that finds nobody leading becomes the
leader; it runs every pending item as one group in one worker-thread call, hands each
follower its outcome, and passes leadership to the oldest item that arrived meanwhile. A
caller is never stuck behind a task that may have gone away, because every item that is
still pending when a group ends gets a leader of its own.

Cancellation: an item cancelled while still pending is withdrawn and nothing happens to
it. Once taken into a group it is written: a cancelled caller sees ``Cancelled`` and its
outcome is dropped, which costs an ack, never data (clients retry with the same id and
deduplication answers the original ack). A group is never abandoned half way: the leader
runs shielded, and a caller promoted to lead still leads before its cancellation goes on.

A backend that can bound and interrupt its own calls (PostgreSQL: a deadline per call and a
cancel request) passes ``arun_group``, an async function awaited in that same shield, instead
of a blocking ``run_group`` for a worker thread; it must bound itself, since its callers'
cancellation cannot reach it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["GroupCommitter", "Outcome"]

T = TypeVar("T")
R = TypeVar("R")

#: One item's outcome: its result, or the exception its caller should see.
Outcome = R | Exception


class _State(enum.Enum):
    WAITING = "waiting"  # in the pending list, may still be withdrawn
    TAKEN = "taken"  # in a group that is running
    LEAD = "lead"  # promoted: its task leads the next group
    DONE = "done"  # outcome set


class _Slot(Generic[T, R]):
    """One caller's item and, once its group ran, its outcome."""

    __slots__ = ("item", "state", "outcome", "event")

    def __init__(self, item: T) -> None:
        self.item = item
        self.state = _State.WAITING
        self.outcome: Outcome[R] | BaseException | None = None
        self.event = trio.Event()

    def unwrap(self) -> R:
        outcome = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]


class GroupCommitter(Generic[T, R]):
    """Run concurrent ``commit(item)`` calls in groups through one synchronous function.

    ``run_group(items)`` runs in a worker thread (through ``limiter``, so it can share a
    one-at-a-time resource with other thread calls) and returns one outcome per item, in
    order: a result, or the exception that item's caller should see. It should not raise;
    if it does anyway, every caller of that group sees the exception it raised. Two items
    of one group are independent: grouping must not change any item's outcome.
    ``arun_group`` (instead of ``run_group``) is the same contract as an async function.
    """

    def __init__(
        self,
        run_group: Callable[[list[T]], list[Outcome[R]]] | None = None,
        *,
        limiter: trio.CapacityLimiter | None = None,
        arun_group: Callable[[list[T]], Awaitable[list[Outcome[R]]]] | None = None,
    ) -> None:
        if (run_group is None) == (arun_group is None):
            raise TypeError("pass exactly one of run_group and arun_group")
        self._run_group = run_group
        self._arun_group = arun_group
        self._limiter = limiter
        self._pending: list[_Slot[T, R]] = []
        self._leading = False
        self.groups = 0
        """Groups run so far: each is one thread hop and, for a store, one transaction."""
        self.items = 0
        """Items handed to ``run_group`` so far (``items / groups`` is the grouping factor)."""

    async def commit(self, item: T) -> R:
        """Wait for ``item``'s group to run and return its result or raise its exception."""
        slot: _Slot[T, R] = _Slot(item)
        self._pending.append(slot)
        if not self._leading:
            self._leading = True
            await self._lead()
            return slot.unwrap()
        try:
            await slot.event.wait()
        except BaseException:
            if slot.state is _State.WAITING:
                self._pending.remove(slot)
            elif slot.state is _State.LEAD:
                await self._lead()  # the queue must not stall behind a cancelled caller
            raise
        if slot.state is _State.LEAD:
            await self._lead()
        return slot.unwrap()

    async def _lead(self) -> None:
        """Run everything pending as one group, hand out outcomes, then pass the lead on."""
        group, self._pending = self._pending, []
        for slot in group:
            slot.state = _State.TAKEN
        with trio.CancelScope(shield=True):  # the thread call cannot be abandoned anyway
            try:
                items = [slot.item for slot in group]
                outcomes: list[Outcome[R] | BaseException] = list(
                    await self._arun_group(items)
                    if self._arun_group is not None
                    else await trio.to_thread.run_sync(
                        self._run_group, items, limiter=self._limiter, abandon_on_cancel=False
                    )
                )
                if len(outcomes) != len(group):
                    raise RuntimeError(f"run_group returned {len(outcomes)} outcomes for {len(group)} items")
            except BaseException as exc:
                outcomes = [exc] * len(group)
        self.groups += 1
        self.items += len(group)
        for slot, outcome in zip(group, outcomes):
            slot.outcome = outcome
            slot.state = _State.DONE
            slot.event.set()
        if self._pending:
            successor = self._pending[0]
            successor.state = _State.LEAD
            successor.event.set()
        else:
            self._leading = False
