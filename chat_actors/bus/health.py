"""How a networked bus notices it is down and comes back: backoff, probes, the supervisor.

Kept apart from the Redis code so it can be tested on its own, under trio's autojump clock:

* ``Backoff``: exponential delays with jitter, capped, so a node whose Redis is gone retries a
  few times a second at first and then every ``cap`` seconds, never in a busy loop, and many
  nodes do not reconnect in lock step.
* ``ProbeMonitor``: the bookkeeping of "publish a probe on my own channel every interval and
  expect it back". A connection can be half-open (TCP alive, nothing delivered); only a round
  trip through the bus proves delivery. ``misses`` probes in a row not back, with nothing
  else arriving either, means down; a probe merely stuck behind a backlog is given longer.
* ``supervise``: run a session, on failure wait a backoff delay and run it again, forever.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

__all__ = ["Backoff", "ProbeMonitor", "ProbeTimeout", "describe_failure", "supervise"]

logger = logging.getLogger(__name__)


class Backoff:
    """Delays ``base * factor**k`` capped at ``cap``, each scaled by a random factor in
    ``[1 - jitter, 1]`` (so a delay never exceeds the cap and never drops below
    ``(1 - jitter)`` of its step). ``reset()`` starts again from ``base``."""

    def __init__(
        self,
        base: float = 0.25,
        cap: float = 2.5,
        *,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs factor >= 1 and 0 <= jitter < 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._step = base

    def next(self) -> float:
        delay = self._step * (1.0 - self.jitter * self._rng.random())
        self._step = min(self.cap, self._step * self.factor)
        return delay

    def reset(self) -> None:
        self._step = self.base


class ProbeTimeout(Exception):
    """Probes stopped coming back: the bus is silent (half-open connection or lost
    subscription) and the session must be torn down."""


class ProbeMonitor:
    """Counts probes not seen back. Pure bookkeeping: no clock, no I/O.

    Each session calls ``start()``; then, every interval, ``due()`` returns the number of the
    next probe to send, first judging the previous one if it has not come back:

    * nothing at all arrived on the subscription meanwhile (``traffic()`` not called): a
      *quiet* miss. ``misses`` quiet misses in a row -> ProbeTimeout: the bus is silent.
    * other messages did arrive: the probe is only late, queued behind them (a busy node or
      a burst), and the bus still delivers. Only after ``patience`` intervals in a row without
      any probe back does it count as down (ProbeTimeout): the backlog is then so old that
      reconnecting and reading the gap from the store is cheaper than working through it.

    ``seen(n)`` records a probe of the current session that came back, even a late one.
    """

    def __init__(self, misses: int = 2, patience: int = 10) -> None:
        if misses < 1 or patience < misses:
            raise ValueError("probes need misses >= 1 and patience >= misses")
        self.misses = misses
        self.patience = patience
        self.quiet_in_row = 0
        self.missing_in_row = 0
        self.missed_total = 0
        self.sent = 0
        self._next = 1
        self._session_first = 1
        self._outstanding: int | None = None
        self._traffic = False

    def start(self) -> int:
        """A new session: forget outstanding probes; returns the first probe's number."""
        self._session_first = self._next
        self.quiet_in_row = self.missing_in_row = 0
        self._traffic = False
        return self._take()

    def traffic(self) -> None:
        """Something (not a probe) arrived on the subscription: the connection delivers."""
        self._traffic = True

    def due(self) -> int:
        if self._outstanding is not None:
            self.missed_total += 1
            self.missing_in_row += 1
            self.quiet_in_row = 0 if self._traffic else self.quiet_in_row + 1
            if self.quiet_in_row >= self.misses:
                raise ProbeTimeout(f"{self.quiet_in_row} probes in a row did not come back and nothing else arrived")
            if self.missing_in_row >= self.patience:
                raise ProbeTimeout(f"no probe came back for {self.missing_in_row} intervals (delivery is too far behind)")
        self._traffic = False
        return self._take()

    def seen(self, n: int) -> bool:
        """Record probe ``n``; False if it is not one of this session's (ignored)."""
        if not self._session_first <= n < self._next:
            return False
        self.quiet_in_row = self.missing_in_row = 0
        if self._outstanding is not None and n >= self._outstanding:
            self._outstanding = None
        return True

    @property
    def waiting(self) -> bool:
        """True while the newest probe has not come back."""
        return self._outstanding is not None

    def _take(self) -> int:
        n = self._next
        self._next += 1
        self._outstanding = n
        self.sent += 1
        return n


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for logs and ``StateChange.reason`` (groups are flattened)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_failure(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def supervise(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    backoff: Backoff,
    *,
    on_attempt: Callable[[], None],
    on_down: Callable[[str], None],
    stable_s: float,
) -> None:
    """Run ``session(mark_up)`` again and again until cancelled.

    ``session`` calls ``mark_up()`` once it is fully up and then runs until it fails (raises
    an Exception, groups of them included) or returns. ``on_attempt()`` is called before each
    attempt and ``on_down(reason)`` after each end; the next attempt waits
    ``backoff.next()``. The backoff starts again from its base only after a session that
    stayed up for ``stable_s`` seconds, so a connection that flaps still backs off.
    Cancellation (the bus closing) propagates at once from the session or the sleep.
    """
    while True:
        up_since: float | None = None

        def mark_up() -> None:
            nonlocal up_since
            up_since = trio.current_time()

        on_attempt()
        try:
            await session(mark_up)
            reason = "session ended"
        except Exception as exc:  # a failed session (groups of Exceptions too); never Cancelled
            reason = describe_failure(exc)
        if up_since is not None and trio.current_time() - up_since >= stable_s:
            backoff.reset()
        on_down(reason)
        delay = backoff.next()
        logger.info("bus session ended (%s); next attempt in %.2f s", reason, delay)
        await trio.sleep(delay)
