"""The knobs of a chat connection and the numbers it reports, as frozen records."""

from __future__ import annotations

import attrs

from .backoff import Backoff
from .rooms import DEFAULT_HOLD_LIMIT

__all__ = ["ChatOptions", "ChatStatistics"]


_positive_count = attrs.validators.gt(0)
_positive_seconds = attrs.validators.gt(0.0)
_optional_seconds = attrs.validators.optional(_positive_seconds)


@attrs.frozen(kw_only=True)
class ChatOptions:
    """Keyword options of `open_chat` (seconds for durations, counts for sizes)."""

    #: delays between reconnect attempts
    backoff: Backoff = Backoff()
    #: stop reconnecting after this long without a connection and raise ConnectionFailed
    #: from every call and from `events()`; None: keep trying for as long as the chat is open
    give_up_after: float | None = attrs.field(default=None, validator=_optional_seconds)
    #: one attempt's bound: TCP connect, WebSocket upgrade and `welcome` up to `synced`
    connect_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)
    #: WebSocket ping interval, and how long a pong may take before the connection counts as
    #: dead (a half-open TCP connection reports nothing); None: the server's `heartbeat`
    keepalive: float | None = attrs.field(default=None, validator=_optional_seconds)
    #: events buffered for `events()`; see `delivery.py` for what happens when it is full
    buffer_size: int = attrs.field(default=1000, validator=_positive_count)
    #: early messages kept per room (beyond it they are read again from the store)
    hold_limit: int = attrs.field(default=DEFAULT_HOLD_LIMIT, validator=_positive_count)
    #: answer `rate_limited` and `unavailable` (nothing was stored) by waiting and sending
    #: again: after the server's refill time for `rate_limited`, with `backoff` for
    #: `unavailable`; False raises RateLimited / Unavailable to the caller instead
    retry_busy: bool = True
    #: follow the user's direct rooms: offline and live direct messages appear in `events()`
    direct_messages: bool = True
    #: sends and direct messages awaiting their ack at once; more `send()` calls wait
    max_pending_sends: int = attrs.field(default=256, validator=_positive_count)


@attrs.frozen
class ChatStatistics:
    """A snapshot of a chat's counters (`Chat.statistics()`)."""

    #: connections that reached `synced` (1 + the successful reconnects)
    connects: int
    #: a connection is up and every joined room resumed on it
    live: bool
    #: events waiting in the buffer for the program
    buffered_events: int
    #: ephemeral events (typing, read, presence) and unsolicited errors dropped while the buffer was full
    dropped_events: int
    #: history pages read to fill gaps (`recovered: false`, a full buffer, a lost message)
    history_pages: int
    #: commands sent again on a new connection because the old one ended unanswered
    resent: int
