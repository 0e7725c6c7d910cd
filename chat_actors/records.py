"""Commands (client -> server) and events (server -> client) as frozen records.

Every other module speaks in these records, never in JSON dicts: the wire format is known
only to `chat_actors.protocol`, so a field rename on the wire touches one file. Records are
frozen and slotted so they can be shared between actors and cached without copies.

Each class carries its wire `type` as the class variable `TYPE` (not an attrs field, so it
takes no part in construction, equality or the record's size). Validation of field values
happens once, at the edge, in `protocol.decode_command`; records built by the server itself
are trusted and not re-checked.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

import attrs

__all__ = [
    "Ref",
    # commands
    "Auth",
    "Join",
    "Leave",
    "Send",
    "Dm",
    "History",
    "Typing",
    "Read",
    "PresenceQuery",
    "Ping",
    "Command",
    "COMMAND_TYPES",
    # events
    "WelcomeLimits",
    "RoomEntry",
    "Welcome",
    "Synced",
    "Joined",
    "Left",
    "Ack",
    "Message",
    "HistoryPage",
    "TypingEvent",
    "ReadEvent",
    "PresenceEvent",
    "PresenceMember",
    "PresenceList",
    "Pong",
    "ErrorEvent",
    "Event",
    "EVENT_TYPES",
]

#: A client correlation value: a string of at most 64 characters or a JSON integer.
Ref = Union[str, int, None]


def _plain_number(value: int | float) -> int | float:
    """Keep integral floats as ints so `30.0` from the config goes out as `30`.

    PROTOCOL section 4 shows `"heartbeat":30` and `"rate_per_second":20`; a client that
    checks for an integer should not break because the config happens to hold a float.
    """
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _code_str(value: str) -> str:
    """Store an `ErrorCode` member as its plain string value (records compare and print plainly)."""
    return getattr(value, "value", value)


# --------------------------------------------------------------------------- commands


@attrs.frozen
class Auth:
    """First frame of a connection that did not authenticate on the upgrade request."""

    TYPE: ClassVar[str] = "auth"
    token: str
    ref: Ref = None


@attrs.frozen
class Join:
    """Join a room; with `since`, replay what was missed after that seq."""

    TYPE: ClassVar[str] = "join"
    room: str
    since: int | None = None
    ref: Ref = None


@attrs.frozen
class Leave:
    TYPE: ClassVar[str] = "leave"
    room: str
    ref: Ref = None


@attrs.frozen
class Send:
    """Publish to a room; `id` is the client's idempotency key."""

    TYPE: ClassVar[str] = "send"
    room: str
    id: str
    text: str
    meta: dict[str, Any] | None = None
    ref: Ref = None


@attrs.frozen
class Dm:
    """Publish to the direct room shared with `to`."""

    TYPE: ClassVar[str] = "dm"
    to: str
    id: str
    text: str
    meta: dict[str, Any] | None = None
    ref: Ref = None


@attrs.frozen
class History:
    """A page of stored messages; `before` and `after` are exclusive seq bounds."""

    TYPE: ClassVar[str] = "history"
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = 50
    ref: Ref = None


@attrs.frozen
class Typing:
    TYPE: ClassVar[str] = "typing"
    room: str
    ref: Ref = None


@attrs.frozen
class Read:
    """Move the user's read cursor forward to `seq`."""

    TYPE: ClassVar[str] = "read"
    room: str
    seq: int
    ref: Ref = None


@attrs.frozen
class PresenceQuery:
    """Ask who is present in a room (wire type `presence`)."""

    TYPE: ClassVar[str] = "presence"
    room: str
    ref: Ref = None


@attrs.frozen
class Ping:
    TYPE: ClassVar[str] = "ping"
    ref: Ref = None


Command = Union[Auth, Join, Leave, Send, Dm, History, Typing, Read, PresenceQuery, Ping]

#: wire `type` -> command class
COMMAND_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Auth, Join, Leave, Send, Dm, History, Typing, Read, PresenceQuery, Ping)
}


# --------------------------------------------------------------------------- events


@attrs.frozen
class WelcomeLimits:
    """The limits a client must respect, announced in `welcome`."""

    max_frame_bytes: int
    max_text_chars: int
    rate_per_second: float = attrs.field(converter=_plain_number)
    rate_burst: int


@attrs.frozen
class RoomEntry:
    """One of the user's rooms in `welcome`: last seq and the user's read cursor."""

    room: str
    seq: int
    read: int


@attrs.frozen
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    user: str
    session: str
    server: str
    heartbeat: float = attrs.field(converter=_plain_number)
    limits: WelcomeLimits
    rooms: tuple[RoomEntry, ...] = attrs.field(converter=tuple)
    #: the node serving this connection (PROTOCOL section 9); omitted when None
    node: str | None = None


@attrs.frozen
class Synced:
    """End of the offline direct-message backlog that follows `welcome`."""

    TYPE: ClassVar[str] = "synced"


@attrs.frozen
class Joined:
    TYPE: ClassVar[str] = "joined"
    room: str
    seq: int
    members: tuple[str, ...] = attrs.field(converter=tuple)
    recovered: bool
    ref: Ref = None


@attrs.frozen
class Left:
    TYPE: ClassVar[str] = "left"
    room: str
    ref: Ref = None


@attrs.frozen
class Ack:
    """Sent only once the message is durably stored."""

    TYPE: ClassVar[str] = "ack"
    id: str
    room: str
    seq: int
    ts: int
    ref: Ref = None


@attrs.frozen
class Message:
    """A stored message as fanned out; `sender` is `from` on the wire."""

    TYPE: ClassVar[str] = "message"
    room: str
    seq: int
    id: str
    sender: str
    text: str
    meta: dict[str, Any] | None
    ts: int


@attrs.frozen
class HistoryPage:
    """Reply to `history` (wire type `history`); messages in ascending seq."""

    TYPE: ClassVar[str] = "history"
    room: str
    messages: tuple[Message, ...] = attrs.field(converter=tuple)
    more: bool
    ref: Ref = None


@attrs.frozen
class TypingEvent:
    TYPE: ClassVar[str] = "typing"
    room: str
    user: str


@attrs.frozen
class ReadEvent:
    TYPE: ClassVar[str] = "read"
    room: str
    user: str
    seq: int


@attrs.frozen
class PresenceEvent:
    """A user came online in a room or went offline (`status`)."""

    TYPE: ClassVar[str] = "presence"
    room: str
    user: str
    status: str


@attrs.frozen
class PresenceMember:
    user: str
    connections: int


@attrs.frozen
class PresenceList:
    TYPE: ClassVar[str] = "presence_list"
    room: str
    members: tuple[PresenceMember, ...] = attrs.field(converter=tuple)
    ref: Ref = None


@attrs.frozen
class Pong:
    TYPE: ClassVar[str] = "pong"
    ts: int
    ref: Ref = None


@attrs.frozen
class ErrorEvent:
    """An `error` event; `code` is an `errors.ErrorCode` value (a str)."""

    TYPE: ClassVar[str] = "error"
    code: str = attrs.field(converter=_code_str)
    message: str
    ref: Ref = None


Event = Union[
    Welcome,
    Synced,
    Joined,
    Left,
    Ack,
    Message,
    HistoryPage,
    TypingEvent,
    ReadEvent,
    PresenceEvent,
    PresenceList,
    Pong,
    ErrorEvent,
]

#: wire `type` -> event class
EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        Welcome,
        Synced,
        Joined,
        Left,
        Ack,
        Message,
        HistoryPage,
        TypingEvent,
        ReadEvent,
        PresenceEvent,
        PresenceList,
        Pong,
        ErrorEvent,
    )
}
