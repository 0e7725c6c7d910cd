"""What travels on the bus: topics and event records, and their sans-IO JSON codec.

Every bus payload is one small JSON object tagged by ``"k"`` (its kind) and carrying
``"origin"``, the node id of the publisher, so a receiver can tell its own events from its
peers' (the bus may hand a node its own events back). Events that carry a client-facing event
(``MessageCommitted.event``, ``UserEvent.event``) hold it as the JSON bytes the server puts on
the wire (``protocol.message_json``), not as a WebSocket frame: each receiving node frames it
once for its own connections.

The codec does no I/O and imports no trio: ``encode`` is a pure function of the record,
``decode`` of the bytes. ``decode`` never raises anything but ``MalformedEvent`` (a
``ValueError``), whatever the bytes: the bus drops such a payload and counts it. Unknown
extra keys are ignored so that a newer node may add fields without breaking older ones during
a rolling upgrade; an unknown kind is malformed (dropped and counted).

Embedded events travel as nested JSON objects (``orjson.Fragment`` on encode, so they are not
re-escaped) and come back re-serialised compactly by orjson: byte-identical to the original
when that was compact orjson output, as the server's own events are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, Union

import attrs
import orjson

__all__ = [
    "BusEvent",
    "EVENT_TYPES",
    "GrantChanged",
    "MAX_PAYLOAD_BYTES",
    "MalformedEvent",
    "MembershipChanged",
    "MessageCommitted",
    "PresenceRelay",
    "Probe",
    "ReadRelay",
    "RoomCreated",
    "RoomHead",
    "Topic",
    "TopicKind",
    "TypingRelay",
    "UserEvent",
    "decode",
    "encode",
]

#: A payload larger than this is not decoded (malformed): bus events are small by design.
MAX_PAYLOAD_BYTES = 1 << 20

TopicKind = Literal["room", "user", "node", "cluster"]
_TOPIC_KINDS: frozenset[str] = frozenset({"room", "user", "node", "cluster"})


class MalformedEvent(ValueError):
    """A bus payload that is not a valid event (wrong JSON, unknown kind, bad field)."""


@attrs.frozen(slots=True)
class Topic:
    """Where an event goes: a room's channel, a user's, a node's own, or the whole cluster.

    A node subscribes to ``Topic.room(name)`` while it runs that room's actor with local
    members, to ``Topic.user(name)`` while the user has a local connection, and (the bus does
    this itself) to ``Topic.node(node_id)``, which carries its probes and anything addressed to
    that node. ``Topic.cluster()`` is for invalidations every node may care about.
    ``key`` is the backend-neutral channel name (the Redis bus puts its prefix in front).
    """

    kind: TopicKind
    name: str = ""

    @classmethod
    def room(cls, name: str) -> Topic:
        return cls("room", name)

    @classmethod
    def user(cls, name: str) -> Topic:
        return cls("user", name)

    @classmethod
    def node(cls, node_id: str) -> Topic:
        return cls("node", node_id)

    @classmethod
    def cluster(cls) -> Topic:
        return cls("cluster", "")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def from_key(cls, key: str) -> Topic | None:
        """The topic whose ``key`` this is, or None (not a topic key)."""
        kind, sep, name = key.partition(":")
        if not sep or kind not in _TOPIC_KINDS:
            return None
        return cls(kind, name)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- records


@attrs.frozen(slots=True)
class MessageCommitted:
    """A message the origin node stored as ``seq`` of ``room``; ``event`` = its wire JSON.

    Receivers feed it to the room's sequencer: seq = delivered + 1 goes out, lower is a
    duplicate (dropped), higher waits briefly and then the gap is read from the store.
    """

    KIND: ClassVar[str] = "msg"
    origin: str
    room: str
    seq: int
    event: bytes


@attrs.frozen(slots=True)
class TypingRelay:
    KIND: ClassVar[str] = "typing"
    origin: str
    room: str
    user: str


@attrs.frozen(slots=True)
class ReadRelay:
    KIND: ClassVar[str] = "read"
    origin: str
    room: str
    user: str
    seq: int


@attrs.frozen(slots=True)
class PresenceRelay:
    """A presence change the origin node announces for its own connections of ``user``."""

    KIND: ClassVar[str] = "presence"
    origin: str
    room: str
    user: str
    status: Literal["online", "offline"]
    #: the user's connections joined to the room on the origin node (0: in its grace period)
    connections: int | None = None


@attrs.frozen(slots=True)
class UserEvent:
    """An event for every device of ``user`` (a DM): ``event`` is its wire JSON.

    ``room``/``seq`` name the stored message when there is one (a DM lives in its ``dm:``
    room), so a receiver can skip what it already delivered; both None for other events.
    """

    KIND: ClassVar[str] = "user"
    origin: str
    user: str
    event: bytes
    room: str | None = None
    seq: int | None = None


@attrs.frozen(slots=True)
class GrantChanged:
    """Invalidation: ``user`` may now enter private ``room`` (re-read grants from the store)."""

    KIND: ClassVar[str] = "grant"
    origin: str
    room: str
    user: str


@attrs.frozen(slots=True)
class RoomCreated:
    """Invalidation: ``room`` now exists (drop any cached "not found")."""

    KIND: ClassVar[str] = "room_created"
    origin: str
    room: str
    room_kind: str


@attrs.frozen(slots=True)
class MembershipChanged:
    """Invalidation: ``user`` joined (``joined``) or left ``room`` through the origin node."""

    KIND: ClassVar[str] = "membership"
    origin: str
    room: str
    user: str
    joined: bool


@attrs.frozen(slots=True)
class RoomHead:
    """``room``'s messages up to ``seq`` are stored: a node that delivered less reads the rest
    from the store. Sent after a node's bus came back, for the messages it committed while
    its own publishes could not go out (the other nodes' buses never went down)."""

    KIND: ClassVar[str] = "head"
    origin: str
    room: str
    seq: int
    #: the origin could not publish its messages after this seq (a direct room's actor
    #: started for this event delivers from there to the users' devices)
    since: int | None = None


@attrs.frozen(slots=True)
class Probe:
    """The liveness probe a node publishes on its own topic and expects back (``n`` grows)."""

    KIND: ClassVar[str] = "probe"
    origin: str
    n: int


BusEvent = Union[
    MessageCommitted,
    TypingRelay,
    ReadRelay,
    PresenceRelay,
    UserEvent,
    GrantChanged,
    RoomCreated,
    MembershipChanged,
    RoomHead,
    Probe,
]
EVENT_TYPES: tuple[type, ...] = (
    MessageCommitted,
    TypingRelay,
    ReadRelay,
    PresenceRelay,
    UserEvent,
    GrantChanged,
    RoomCreated,
    MembershipChanged,
    RoomHead,
    Probe,
)

# --------------------------------------------------------------------------- field checks

_MAX_INT = (1 << 63) - 1


def _text(value: Any) -> str:
    if type(value) is not str or not value:
        raise MalformedEvent("expected a non-empty string")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise MalformedEvent("expected a non-negative 64-bit integer")
    return value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise MalformedEvent("expected a boolean")
    return value


def _status(value: Any) -> str:
    if value not in ("online", "offline"):
        raise MalformedEvent("expected 'online' or 'offline'")
    return value  # type: ignore[no-any-return]


def _event(value: Any) -> bytes:
    if type(value) is not dict:
        raise MalformedEvent("expected an embedded JSON object")
    return orjson.dumps(value)


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        return None if value is None else check(value)

    return checked


#: The check of each field name (the same name means the same type in every record).
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "origin": _text,
    "room": _text,
    "user": _text,
    "seq": _count,
    "since": _count,
    "n": _count,
    "status": _status,
    "room_kind": _text,
    "joined": _flag,
    "connections": _count,
    "event": _event,
}
_OPTIONAL: dict[type, frozenset[str]] = {
    UserEvent: frozenset({"room", "seq"}),
    PresenceRelay: frozenset({"connections"}),
    RoomHead: frozenset({"since"}),
}


def _spec(cls: type) -> tuple[tuple[str, Callable[[Any], Any], bool], ...]:
    optional = _OPTIONAL.get(cls, frozenset())
    return tuple(
        (f.name, _optional(_CHECKS[f.name]) if f.name in optional else _CHECKS[f.name], f.name in optional)
        for f in attrs.fields(cls)
    )


_BY_KIND: dict[str, tuple[type, tuple[tuple[str, Callable[[Any], Any], bool], ...]]] = {
    cls.KIND: (cls, _spec(cls)) for cls in EVENT_TYPES  # type: ignore[attr-defined]
}
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in attrs.fields(cls)) for cls in EVENT_TYPES}

# --------------------------------------------------------------------------- codec


def encode(event: BusEvent) -> bytes:
    """The bus payload of ``event``: ``{"k": kind, "origin": ..., <fields>}`` as UTF-8 JSON.

    ``event`` fields must already be a JSON object's bytes (they are embedded without being
    parsed again). Raises TypeError for something that is not a bus event record.
    """
    cls = type(event)
    names = _FIELDS.get(cls)
    if names is None:
        raise TypeError(f"not a bus event: {event!r}")
    doc: dict[str, Any] = {"k": cls.KIND}  # type: ignore[attr-defined]
    for name in names:
        value = getattr(event, name)
        if name == "event":
            value = orjson.Fragment(value)
        elif value is None:
            continue  # optional fields are omitted rather than sent as null
        doc[name] = value
    return orjson.dumps(doc)


def decode(data: bytes | str) -> BusEvent:
    """The event in a bus payload. Raises MalformedEvent (only) for anything invalid."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MalformedEvent(f"payload of {len(data)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if type(doc) is not dict:
        raise MalformedEvent("payload is not a JSON object")
    kind = doc.get("k")
    entry = _BY_KIND.get(kind) if type(kind) is str else None
    if entry is None:
        raise MalformedEvent(f"unknown event kind {kind!r}")
    cls, spec = entry
    values: dict[str, Any] = {}
    for name, check, optional in spec:
        if name not in doc and not optional:
            raise MalformedEvent(f"{kind}: missing field {name!r}")
        try:
            values[name] = check(doc.get(name))
        except MalformedEvent as exc:
            raise MalformedEvent(f"{kind}.{name}: {exc}") from None
        except orjson.JSONEncodeError as exc:  # an embedded object orjson cannot write back
            raise MalformedEvent(f"{kind}.{name}: {exc}") from None
    return cls(**values)  # type: ignore[no-any-return]
