"""Per-connection flow limits: the token bucket and the error budget.

Both are plain objects fed with a monotonic clock, so they are tested without trio and cost
a few float operations per command.
"""

from __future__ import annotations

from collections import deque

#: PROTOCOL section 7: rate limited for more than this long in a row closes with 4029
RATE_LIMIT_CLOSE_S = 10.0
#: a gap longer than this between two `rate_limited` answers ends the streak
RATE_LIMIT_STREAK_GAP_S = 1.0
ERROR_BUDGET = 100
ERROR_WINDOW_S = 60.0


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take()` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "_streak_start", "_last_limited")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self._streak_start: float | None = None
        self._last_limited: float | None = None

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def limited(self, now: float) -> bool:
        """Record a `rate_limited` answer; True once the streak has lasted over 10 s.

        Commands let through in between do not reset the streak; a second without any
        `rate_limited` answer does.
        """
        last = self._last_limited
        if last is None or now - last > RATE_LIMIT_STREAK_GAP_S or self._streak_start is None:
            self._streak_start = now
        self._last_limited = now
        return now - self._streak_start > RATE_LIMIT_CLOSE_S


class ErrorBudget:
    """More than `ERROR_BUDGET` errors within `ERROR_WINDOW_S` exhausts the budget."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] | None = None      # made on the first error: most never err

    def spend(self, now: float) -> bool:
        """Record one error; True when the budget is exhausted."""
        times = self._times
        if times is None:
            times = self._times = deque(maxlen=ERROR_BUDGET + 1)
        times.append(now)
        return len(times) > ERROR_BUDGET and now - times[0] <= ERROR_WINDOW_S
