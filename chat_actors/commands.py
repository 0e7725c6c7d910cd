"""Internal commands routed to room actors, and the one-shot `Reply` some of them carry.

These are not wire records (those live in `records.py`): they carry the live `Peer` that sent
them, so the room actor can answer synchronously with `peer.deliver(...)` without ever
awaiting a connection. Commands that need an answer outside the room's fan-out path (the
join handshake, HTTP publishes, access checks) carry a `Reply` the sender awaits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from .errors import ChatError, Unavailable

T = TypeVar("T")

#: The longest anyone waits for a room actor's answer or for room in its inbox. A healthy
#: actor answers in milliseconds (a commit, a store read); one that is stuck or gone must not
#: hang its callers (a connection's reader, an HTTP request) forever.
REPLY_TIMEOUT_S = 30.0


class Peer(Protocol):
    """What a room actor may do with a connection: synchronous, never-blocking deliveries."""

    id: str
    user: str

    def deliver(self, frame: bytes, durable: bool) -> bool:
        """Queue one pre-encoded frame; ephemeral frames may be dropped (returns False)."""

    def deliver_messages(self, room: str, items: Sequence[tuple[bytes, int]], blob: bytes) -> None:
        """Queue durable `message` frames of one room, in seq order (a direct room's frames
        at or below `direct_seen` are dropped: the peer has them).

        `items` are (frame, seq) pairs and `blob` is their frames joined: a peer that is not
        replaying writes the blob in one go (one syscall for a whole drain), a replaying one
        parks the frames one by one so that the (room, seq) keys can dedupe.
        """

    def send_event(self, event: Any, durable: bool = True) -> bool:
        """Encode and queue one event meant for this peer only (replies, acks)."""

    def direct_seen(self, room: str) -> int:
        """The highest seq of direct room `room` this peer was handed or listed in its
        `welcome` (0: none); `deliver_messages` drops that room's messages at or below it."""

    def send_error(self, error: ChatError) -> None:
        """Queue an `error` event; counts against the peer's error budget."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection (never blocks): e.g. its room's actor crashed, so it must resume."""


class Reply(Generic[T]):
    """A one-shot answer slot: set once by the actor, awaited once by the requester.

    Cancellation of the waiter leaves the slot unread; the actor never blocks on it. A wait
    is bounded: after `REPLY_TIMEOUT_S` it raises `Unavailable`.
    """

    __slots__ = ("_event", "_value", "_error")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout_s: float = REPLY_TIMEOUT_S) -> T:
        """Wait for the answer; raises the error the actor failed it with, or `Unavailable`
        when none came within `timeout_s`."""
        with trio.move_on_after(timeout_s):
            await self._event.wait()
        if not self._event.is_set():
            raise Unavailable("the room did not answer in time, retry")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@attrs.frozen
class JoinResult:
    """The actor's answer to a join: the committed seq the replay must reach, and presence."""

    seq: int
    members: tuple[str, ...]
    recovered: bool


@attrs.frozen
class PublishResult:
    seq: int
    ts: int
    duplicate: bool


@attrs.frozen(eq=False)
class JoinCmd:
    peer: Peer
    since: int | None
    ref: str | int | None
    reply: Reply[JoinResult]


@attrs.frozen(eq=False)
class LeaveCmd:
    peer: Peer
    ref: str | int | None


@attrs.frozen(eq=False)
class PublishCmd:
    """A `send`, a `dm` (direct_to set) or an HTTP publish (reply set, peer None)."""

    user: str
    client_id: str
    text: str
    meta: dict | None
    ref: str | int | None = None
    peer: Peer | None = None
    reply: Reply[PublishResult] | None = None
    direct_to: str | None = None
    via_http: bool = False


@attrs.frozen(eq=False)
class TypingCmd:
    peer: Peer
    ref: str | int | None


@attrs.frozen(eq=False)
class ReadCmd:
    """Move the read cursor; `reply` (True when it moved) is set once the cursor is committed."""

    peer: Peer
    seq: int
    ref: str | int | None
    reply: Reply[bool] | None = None


@attrs.frozen(eq=False)
class PresenceCmd:
    """Presence query from a connection (peer) or from HTTP (reply)."""

    user: str
    ref: str | int | None = None
    peer: Peer | None = None
    reply: Reply[tuple[tuple[str, int], ...]] | None = None


@attrs.frozen(eq=False)
class AccessCmd:
    """May `user` read this room? Answered with True or failed with Forbidden/NotFound."""

    user: str
    reply: Reply[bool]


@attrs.frozen(eq=False)
class DisconnectCmd:
    peer: Peer


@attrs.frozen(eq=False)
class GrantCmd:
    user: str


@attrs.frozen(eq=False)
class RemoteCmd:
    """An event another node published about this room (a bus event: a committed message,
    a typing/read/presence relay, a grant). Handled without a reply: the bus is best effort."""

    event: Any


@attrs.frozen(eq=False)
class CatchUpCmd:
    """Events for this room may have been lost (bus reconnect, a full inbox or bus queue):
    read the room's head from the store and deliver what is missing; re-read presence.
    With `reply`: deliver it before answering (a node about to close its connections)."""

    presence: bool = True
    reply: Reply[None] | None = None


@attrs.frozen(eq=False)
class NodeGoneCmd:
    """A node instance's lease ran out: its users here enter the grace period."""

    instance: str


RoomCommand = (JoinCmd | LeaveCmd | PublishCmd | TypingCmd | ReadCmd | PresenceCmd | AccessCmd | DisconnectCmd
               | GrantCmd | RemoteCmd | CatchUpCmd | NodeGoneCmd)
