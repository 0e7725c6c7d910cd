"""Reconnect delays: exponential backoff with jitter.

After a server restart every client reconnects at once; without jitter they would also
retry in lockstep and hit the server in waves. Each delay is therefore drawn from the upper
part of its exponential step (`delay * uniform(1 - jitter, 1)`), so it never collapses to
zero but spreads the herd.
"""

from __future__ import annotations

import random

import attrs

__all__ = ["Backoff"]


@attrs.frozen
class Backoff:
    """Delay before reconnect attempt `n` (0-based): `initial * factor**n`, capped at `maximum`,
    then scaled by a random factor in [1 - jitter, 1]. Seconds."""

    initial: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    maximum: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0), attrs.validators.le(1)])

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt` (the first retry is attempt 0)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        draw = (rng or random).random()
        return base * (1.0 - self.jitter * draw)
