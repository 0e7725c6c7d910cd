"""One room's stream to the program, as a pure state object (no trio, no I/O).

The server promises per connection order without gaps; across reconnects, server restarts,
a full events buffer or an own message whose `ack` overtook someone else's `message`, the
library keeps the promise for the program by numbers alone:

* `last` is the highest seq handed to the program; everything up to it was handed over,
  each seq once. A message at or below it is a duplicate (a replay, a retried send's
  original, an offline direct message sent again) and is dropped.
* `head` is the highest seq known to exist (from a message, `joined.seq` or `welcome`).
* `held` keeps messages that arrived early (above `last + 1`), bounded by `hold_limit`;
  when full the highest seqs give way, because the lowest are needed first. Anything not
  held is read again with `history after=last` (the stored copy is the same message).

So the stream is complete once `last == head`, and `needs_history()` says when only the
store can close the gap. Invariant: every held seq lies in (last, head].
"""

from __future__ import annotations

import attrs

from chat_actors.records import Message

__all__ = ["RoomStream", "DEFAULT_HOLD_LIMIT"]

#: Early messages kept per room before the highest give way (they are read again later).
DEFAULT_HOLD_LIMIT = 256


@attrs.define
class RoomStream:
    """See the module docstring. `last` is None until the first `joined` of a join without
    `since` tells where the stream starts."""

    room: str
    last: int | None = None
    head: int = 0
    #: the program joined this room: rejoin it (`join since=last`) after every reconnect
    joined: bool = False
    #: the server has answered `joined` at least once (before that there is nothing to resume)
    confirmed: bool = False
    #: a task is reading the gap from the store; until it finishes only it hands messages over
    filling: bool = False
    hold_limit: int = DEFAULT_HOLD_LIMIT
    held: dict[int, Message] = attrs.field(factory=dict)

    def offer(self, msg: Message) -> bool:
        """Take a message from the connection; False when it is a duplicate or cannot be placed."""
        seq = msg.seq
        if self.last is None or seq <= self.last or seq in self.held:
            return False
        if seq > self.head:
            self.head = seq
        if len(self.held) >= self.hold_limit:
            highest = max(self.held)
            if seq > highest:
                return False  # read again from history when its turn comes
            del self.held[highest]
        self.held[seq] = msg
        return True

    def peek(self) -> Message | None:
        """The next message in order, if it is here."""
        if self.last is None:
            return None
        return self.held.get(self.last + 1)

    def commit(self, seq: int) -> None:
        """`seq` (= last + 1) was handed to the program."""
        assert self.last is not None and seq == self.last + 1, (self.last, seq)
        self.last = seq
        self.held.pop(seq, None)
        if seq > self.head:
            self.head = seq

    def see_head(self, seq: int) -> None:
        """The room is known to hold messages up to `seq` (`welcome`, `joined`)."""
        if seq > self.head:
            self.head = seq

    def on_joined(self, seq: int) -> bool:
        """The server answered `joined` with the room's last seq at that moment.

        False when the room now holds fewer messages than were handed over: the server lost
        its store (a `memory://` server restarted, a database restored from an old backup).
        Nothing can make that stream whole; it restarts at `seq` so new messages still flow
        instead of being dropped forever as "duplicates".
        """
        self.confirmed = True
        if self.last is not None and seq < self.last:
            self.last = self.head = seq
            self.held.clear()
            return False
        if self.last is None:
            self.last = seq
        self.see_head(seq)
        return True

    def caught_up(self) -> bool:
        """Everything known to exist was handed over."""
        return self.last is not None and self.last >= self.head

    def needs_history(self) -> bool:
        """The next message is missing and only the store can supply it."""
        return self.last is not None and self.last < self.head and (self.last + 1) not in self.held
