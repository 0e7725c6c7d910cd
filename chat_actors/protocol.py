"""The wire codec: frame text <-> command/event records, validation and limits.

This is the only module that knows the JSON shape of a frame (PROTOCOL.md sections 3-7).
It is sans-IO, like h11 and wsproto: pure functions of text/bytes, no trio, no sockets, so
every rule is tested synchronously and the actors only ever see validated records.

Decoding is strict on purpose. Clients in other languages are built against the written
contract, so the server must refuse what the contract refuses (a `1.0` where an integer is
due, `true` where a number is due, a room name off the pattern) instead of coercing it the
way a permissive converter would. Any input yields a command or a `ProtocolError` /
`TooLarge`; nothing else escapes, whatever the bytes.

Two paths share one set of field rules (`_rules`), so they cannot disagree:

* the general path structures the decoded dict with cattrs (orjson preconf converter, a
  tagged union on `type`, a strict structure hook on every field: cattrs' own int hook
  would take "5" and 1.5) and unstructures events through the same tagged union;
* the hot paths, `send` decoding (once per publish) and `message` encoding (once per
  fan-out, and per item of a history page or replay), are written out by hand because they
  measured clearly faster (CPython 3.11, timeit best of 5 x 200k): decode send 1.3 us hand
  vs 1.8 us cattrs, encode message 0.35 us vs 0.74 us, a 50-message history page 14 us vs
  30 us. The general path costs ~0.4-0.8 us more per command or event than hand-written
  code would, on commands far rarer than `send`, so it stays declarative.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import orjson
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import OrjsonConverter, make_converter
from cattrs.strategies import configure_tagged_union

from .errors import ProtocolError, TooLarge
from .records import COMMAND_TYPES, EVENT_TYPES, Ack, Command, Event, HistoryPage, Message, Send

__all__ = [
    "ROOM_RE", "USERNAME_RE", "MAX_REF_CHARS", "MAX_ID_CHARS", "MAX_HISTORY_LIMIT",
    "DEFAULT_HISTORY_LIMIT", "MAX_SEQ", "MAX_INT", "MAX_NUMBER_CHARS", "MAX_META_DEPTH", "Limits",
    "StoredLike", "decode_command", "decode_send_fields", "loads_json", "is_safe_int", "encode_event", "message_json", "message_from_stored", "command_to_wire",
    "encode_command", "decode_event", "is_valid_room", "is_valid_username", "dm_room",
    "parse_dm_room",
]

#: Public room names (PROTOCOL section 3). `\A...\Z` so `.match` cannot accept a trailing newline.
ROOM_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
#: Usernames (PROTOCOL section 2), also the two halves of a direct room name.
USERNAME_RE = re.compile(r"\A[A-Za-z0-9_.-]{3,32}\Z")

MAX_REF_CHARS = 64
MAX_ID_CHARS = 64
MAX_HISTORY_LIMIT = 200
DEFAULT_HISTORY_LIMIT = 50
#: Every integer on the wire lies within +-MAX_INT (PROTOCOL section 3): the range every JSON
#: client (a JavaScript number included) represents exactly, so nothing is stored changed.
MAX_INT = 2**53 - 1
#: Upper bound of seq-like integers (seq, since, before, after).
MAX_SEQ = MAX_INT
#: A longer number token is refused whatever its value (PROTOCOL section 3).
MAX_NUMBER_CHARS = 32
#: Nesting bound for `meta`, so a stored meta always re-encodes inside any event.
MAX_META_DEPTH = 32

_DM_PREFIX = "dm:"
#: Marks a field missing from the frame. An explicit `null` is a value, and a wrong one for
#: every optional field except `meta` (PROTOCOL section 3: `ref` is a string or an integer).
_ABSENT: Any = object()


@attrs.frozen
class Limits:
    """The configurable limits the codec enforces (hashable: one cached converter each)."""

    max_text_chars: int = 4000
    max_meta_bytes: int = 1024

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        """Build from any object with a `max_text_chars` attribute (the server `Config`)."""
        return cls(max_text_chars=config.max_text_chars)


# --------------------------------------------------------------------------- room names


def is_valid_username(name: object) -> bool:
    """True when `name` matches the username pattern (existence is not the codec's business)."""
    return isinstance(name, str) and USERNAME_RE.match(name) is not None


def parse_dm_room(name: object) -> tuple[str, str] | None:
    """`dm:<a>:<b>` -> (a, b) when both are usernames and a < b by code point, else None."""
    if not isinstance(name, str) or not name.startswith(_DM_PREFIX):
        return None
    parts = name[len(_DM_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    a, b = parts
    if a < b and USERNAME_RE.match(a) and USERNAME_RE.match(b):
        return a, b
    return None


#: Names on the pattern that are still refused: they mean "here" and "up" in every path.
_RESERVED_ROOMS = frozenset({".", ".."})


def is_valid_room(name: object) -> bool:
    """A public/private room name on the pattern (not `.` or `..`), or a well-formed direct room name."""
    if not isinstance(name, str):
        return False
    if ROOM_RE.match(name) is not None:
        return name not in _RESERVED_ROOMS
    return parse_dm_room(name) is not None


def dm_room(a: str, b: str) -> str:
    """The direct room of two users: `dm:` + min + `:` + max, by code point, as spelled.

    Does not validate: callers check that both users exist and differ.
    """
    lo, hi = (a, b) if a < b else (b, a)
    return f"{_DM_PREFIX}{lo}:{hi}"


# --------------------------------------------------------------------------- numbers
# orjson reads an integer token beyond 64 bits as a float (2**64 -> 1.8446744073709552e+19), so
# a value can change before any field rule sees it. Decoded JSON is therefore scanned once: an
# int outside +-MAX_INT is refused at once, and only when a float is present (rare in chat
# frames) is the text parsed again by the stdlib parser, whose hooks see the number tokens.


#: What the token-checking parse puts where a number token breaks the rules.
_BAD_NUMBER: Any = object()


def is_safe_int(value: object) -> bool:
    """A JSON integer (not a bool) within +-(2**53-1)."""
    return type(value) is int and -MAX_INT <= value <= MAX_INT


def _number_error() -> ProtocolError:
    return ProtocolError(
        f"numbers must be integers within +-(2**53-1) or floats, at most {MAX_NUMBER_CHARS} characters long"
    )


def _scan(values: Any) -> bool:
    """Walk decoded JSON values iteratively (orjson nests up to 1024 deep).

    Raises ProtocolError on an int out of range, a non-finite float or a `_BAD_NUMBER`; True
    when a float was seen, whose token must still be checked (`_parse_number_tokens`).
    Strings, the common case, cost one type check each.
    """
    floats = False
    stack: list[Any] = []
    while True:
        for value in values:
            kind = type(value)
            if kind is str:
                continue
            if kind is int:
                if not -MAX_INT <= value <= MAX_INT:
                    raise _number_error()
            elif kind is dict:
                stack.append(value.values())
            elif kind is list:
                stack.append(value)
            elif kind is float:
                if not math.isfinite(value):
                    raise _number_error()
                floats = True
            elif value is _BAD_NUMBER:
                raise _number_error()
        if not stack:
            return floats
        values = stack.pop()


def _int_token(token: str) -> Any:
    if len(token) > MAX_NUMBER_CHARS:
        return _BAD_NUMBER
    value = int(token)
    return value if -MAX_INT <= value <= MAX_INT else _BAD_NUMBER


def _float_token(token: str) -> Any:
    return float(token) if len(token) <= MAX_NUMBER_CHARS else _BAD_NUMBER


def _parse_number_tokens(data: str | bytes) -> Any:
    """The document again, with `_BAD_NUMBER` for each token that breaks the number rules."""
    try:
        return json.loads(data, parse_int=_int_token, parse_float=_float_token)
    except RecursionError:
        raise ProtocolError("JSON nested too deep") from None
    except ValueError:  # pragma: no cover - orjson accepted the text, so the stdlib does too
        raise ProtocolError("invalid JSON") from None


def _check_numbers(obj: dict[str, Any], data: str | bytes) -> None:
    """The number rules over a decoded frame; an error names the top-level field it is in."""
    floats = False
    for key, value in obj.items():
        if type(value) is not str:
            try:
                floats = _scan((value,)) or floats
            except ProtocolError:
                raise _invalid(str(key)[:32], _number_error().message) from None
    if floats:
        again = _parse_number_tokens(data)
        for key, value in again.items():
            try:
                _scan((value,))
            except ProtocolError:
                raise _invalid(str(key)[:32], _number_error().message) from None


def loads_json(data: str | bytes) -> Any:
    """Parse a JSON document (an HTTP body) under the wire's number rules (PROTOCOL section 3).

    Raises ProtocolError for text that is not JSON, nested deeper than orjson reads (1024), or
    holding an integer outside +-(2**53-1) or a number token longer than 32 characters.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("body is not valid UTF-8 JSON") from None
    if _scan((obj,)):
        _scan((_parse_number_tokens(data),))
    return obj


# --------------------------------------------------------------------------- field rules
# Each rule takes the decoded JSON value of a field present in the frame and returns it or
# raises a ProtocolError naming the field (cattrs calls them only for present keys; absent
# optional fields keep the record's default). The frame's `ref` is attached by the caller.


def _invalid(field: str, reason: str) -> ProtocolError:
    return ProtocolError(f"invalid field '{field}': {reason}")


def _missing(field: object) -> ProtocolError:
    return ProtocolError(f"missing field '{field}'")


def _check_ref(value: Any) -> str | int | None:
    if value is _ABSENT:
        return None
    if type(value) is str:
        if len(value) <= MAX_REF_CHARS:
            return value
        raise _invalid("ref", f"longer than {MAX_REF_CHARS} characters")
    if type(value) is int and -MAX_INT <= value <= MAX_INT:
        return value
    raise _invalid("ref", "must be a string or an integer within +-(2**53-1)")


def _check_room(value: Any) -> str:
    if type(value) is str and is_valid_room(value):
        return value
    raise _invalid("room", "must match [A-Za-z0-9_.-]{1,64} (not . or ..) or be dm:<a>:<b> (usernames, a < b)")


def _check_username(field: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if type(value) is str and USERNAME_RE.match(value) is not None:
            return value
        raise _invalid(field, "must be a username matching [A-Za-z0-9_.-]{3,32}")

    return check


def _check_client_id(value: Any) -> str:
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS:
        return value
    raise _invalid("id", f"must be a string of 1..{MAX_ID_CHARS} characters")


def _check_token(value: Any) -> str:
    if type(value) is str and value:
        return value
    raise _invalid("token", "must be a non-empty string")


def _check_text(value: Any, limits: Limits) -> str:
    if type(value) is not str:
        raise _invalid("text", "must be a string")
    if not value:
        raise _invalid("text", "must not be empty")
    if len(value) > limits.max_text_chars:  # len() counts code points
        raise TooLarge(f"field 'text' is longer than {limits.max_text_chars} characters")
    return value


def _too_deep(value: Any, depth: int) -> bool:
    if depth > MAX_META_DEPTH:
        return True
    if type(value) is dict:
        return any(_too_deep(v, depth + 1) for v in value.values())
    if type(value) is list:
        return any(_too_deep(v, depth + 1) for v in value)
    return False


def _check_meta(value: Any, limits: Limits) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise _invalid("meta", "must be a JSON object")
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested deeper than orjson encodes
        raise _invalid("meta", f"nested deeper than {MAX_META_DEPTH} levels") from None
    if len(encoded) > limits.max_meta_bytes:
        raise TooLarge(f"field 'meta' is over {limits.max_meta_bytes} bytes as compact JSON")
    # Fewer brackets than the bound (counting any inside strings too) cannot nest deeper.
    if encoded.count(b"{") + encoded.count(b"[") > MAX_META_DEPTH and _too_deep(value, 1):
        raise _invalid("meta", f"nested deeper than {MAX_META_DEPTH} levels")
    return value


def _check_seq(field: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is int and 0 <= value <= MAX_SEQ:
            return value
        raise _invalid(field, "must be a non-negative integer (at most 2**53-1)")

    return check


def _check_limit(value: Any) -> int:
    if type(value) is int and 1 <= value <= MAX_HISTORY_LIMIT:
        return value
    raise _invalid("limit", f"must be an integer in 1..{MAX_HISTORY_LIMIT}")


def _rules(limits: Limits) -> dict[str, Callable[[Any], Any]]:
    """Field name -> rule. Field names mean the same in every command."""
    return {
        "ref": _check_ref,
        "room": _check_room,
        "to": _check_username("to"),
        "id": _check_client_id,
        "token": _check_token,
        "text": functools.partial(_check_text, limits=limits),
        "meta": functools.partial(_check_meta, limits=limits),
        "since": _check_seq("since"),
        "before": _check_seq("before"),
        "after": _check_seq("after"),
        "seq": _check_seq("seq"),
        "limit": _check_limit,
    }


# --------------------------------------------------------------------------- converters


def _with_type(inner: Callable[[Any], dict[str, Any]], tag: str) -> Callable[[Any], dict[str, Any]]:
    """Wrap a generated unstructure fn so the wire dict starts with `type`."""

    def unstructure(value: Any) -> dict[str, Any]:
        out = {"type": tag}
        out.update(inner(value))
        return out

    return unstructure


def _message_from_wire(obj: dict[str, Any], _: Any) -> Message:
    return Message(obj["room"], obj["seq"], obj["id"], obj["from"], obj["text"], obj.get("meta"), obj["ts"])


#: Fields orjson serialises as they are (a tuple of str, a JSON object): no copy needed.
_PASS_THROUGH = {("Joined", "members"), ("Message", "meta")}


def _tag_of(cls: type) -> str:
    return cls.TYPE  # type: ignore[attr-defined]


def _build_wire_converter() -> OrjsonConverter:
    """Unstructuring of commands and events, and lenient structuring of events."""
    conv = make_converter(detailed_validation=False)
    for cls in COMMAND_TYPES.values():
        overrides = {
            a.name: override(omit_if_default=True, unstruct_hook=identity)
            for a in attrs.fields(cls)
            if a.default is None
        }
        inner = make_dict_unstructure_fn(cls, conv, **overrides)
        conv.register_unstructure_hook(cls, _with_type(inner, cls.TYPE))
    for cls in EVENT_TYPES.values():
        overrides = {}
        for a in attrs.fields(cls):
            if a.name == "ref" or (cls.__name__, a.name) == ("Welcome", "node"):
                overrides[a.name] = override(omit_if_default=True, unstruct_hook=identity)
            elif (cls.__name__, a.name) in _PASS_THROUGH:
                overrides[a.name] = override(unstruct_hook=identity)
        if cls is Message:
            overrides["sender"] = override(rename="from")
            inner = make_dict_unstructure_fn(cls, conv, **overrides)
            conv.register_unstructure_hook(cls, _cattrs_message_hook(inner))
            conv.register_structure_hook(cls, _message_from_wire)
        else:
            inner = make_dict_unstructure_fn(cls, conv, **overrides)
            conv.register_unstructure_hook(cls, _with_type(inner, cls.TYPE))
    configure_tagged_union(Command, conv, tag_generator=_tag_of, tag_name="type")
    configure_tagged_union(Event, conv, tag_generator=_tag_of, tag_name="type")
    return conv


def _cattrs_message_hook(inner: Callable[[Any], dict[str, Any]]) -> Callable[[Message], dict[str, Any]]:
    def unstructure(msg: Message) -> dict[str, Any]:
        out = {"type": "message"}
        out.update(inner(msg))
        if msg.meta is None:
            del out["meta"]
        return out

    return unstructure


@functools.lru_cache(maxsize=8)
def _command_structurer(limits: Limits) -> Callable[[Any, Any], Command]:
    """The tagged-union structure hook of `_command_converter(limits)`, looked up once."""
    return _command_converter(limits).get_structure_hook(Command)


@functools.lru_cache(maxsize=8)
def _command_converter(limits: Limits) -> OrjsonConverter:
    """Strict structuring of commands under `limits`: one rule per field, no coercion."""
    conv = make_converter(detailed_validation=False)
    rules = _rules(limits)
    for cls in COMMAND_TYPES.values():
        overrides = {
            a.name: override(struct_hook=_as_hook(rules[a.name])) for a in attrs.fields(cls)
        }
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **overrides))
    configure_tagged_union(Command, conv, tag_generator=_tag_of, tag_name="type")
    return conv


def _as_hook(rule: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _type: Any) -> Any:
        return rule(value)

    return hook


_WIRE = _build_wire_converter()
#: The tagged-union hooks, resolved once (what `unstructure(x, unstructure_as=Event)` dispatches to).
_unstructure_event = _WIRE.get_unstructure_hook(Event)
_unstructure_command = _WIRE.get_unstructure_hook(Command)


# --------------------------------------------------------------------------- decoding


def decode_command(data: str | bytes, limits: Limits) -> Command:
    """Parse and validate one client frame (UTF-8 JSON text as str or bytes).

    Raises ProtocolError (bad_request) or TooLarge (too_large); `.ref` is the frame's `ref`
    when that was itself valid, so the error event can be correlated. Unknown fields are
    ignored. An explicit `null` is a wrongly typed value (bad_request) for every field except
    `meta`, where it means "no meta" (clients serialise an unset optional object that way).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:  # also non-UTF-8 bytes, lone surrogates, >64-bit ints
        raise ProtocolError("frame is not valid UTF-8 JSON") from None
    if type(obj) is not dict:
        raise ProtocolError("frame must be a JSON object")
    ref = _check_ref(obj.get("ref", _ABSENT))
    try:
        _check_numbers(obj, data)
        kind = obj.get("type")
        if kind == "send":
            return _decode_send(obj, limits, ref)
        if type(kind) is not str:
            raise _missing("type") if "type" not in obj else _invalid("type", "must be a string")
        try:
            return _command_structurer(limits)(obj, Command)
        except KeyError as exc:  # the tagged union's unknown tag, or a missing field
            if kind not in COMMAND_TYPES:
                raise ProtocolError(f"unknown type {kind[:32]!r}") from None
            raise _missing(exc.args[0] if exc.args else "?") from None
    except ProtocolError as exc:
        exc.ref = ref
        raise


def decode_send_fields(obj: dict[str, Any], limits: Limits, ref: str | int | None = None) -> Send:
    """Validate `room`, `id`, `text` and `meta` of a dict exactly as a WebSocket `send`.

    For an HTTP publish: its body goes through `loads_json` and then here, never through a
    re-encoding (which a deeply nested `meta` would make fail before validation).
    """
    return _decode_send(obj, limits, ref)


def _decode_send(obj: dict[str, Any], limits: Limits, ref: str | int | None) -> Send:
    """The hot path: one `send` per publish, written out (same rules as the general path)."""
    try:
        room = obj["room"]
        client_id = obj["id"]
        text = obj["text"]
    except KeyError as exc:
        raise _missing(exc.args[0]) from None
    room = _check_room(room)
    client_id = _check_client_id(client_id)
    text = _check_text(text, limits)
    meta = obj.get("meta")
    if meta is not None:
        meta = _check_meta(meta, limits)
    return Send(room, client_id, text, meta, ref)


def decode_event(data: str | bytes) -> Event:
    """Parse a server frame into an event record (for clients, tests and the bench).

    Lenient: the server is trusted, so values are not re-validated. Malformed input raises
    ProtocolError.
    """
    try:
        obj = orjson.loads(data)
        if type(obj) is not dict or obj.get("type") not in EVENT_TYPES:
            raise ProtocolError("not an event frame")
        return _WIRE.structure(obj, Event)
    except ProtocolError:
        raise
    except Exception as exc:  # cattrs/orjson raise a variety; all mean "malformed"
        raise ProtocolError(f"malformed event frame: {exc!r}"[:200]) from None


# --------------------------------------------------------------------------- encoding


def command_to_wire(cmd: Command) -> dict[str, Any]:
    """The wire dict of a command (`type` first, absent optionals omitted)."""
    return _unstructure_command(cmd)


def encode_command(cmd: Command) -> bytes:
    """Compact JSON of a command, as a client sends it."""
    return orjson.dumps(_unstructure_command(cmd))


def _message_dict(msg: Message) -> dict[str, Any]:
    if msg.meta is None:
        return {
            "type": "message",
            "room": msg.room,
            "seq": msg.seq,
            "id": msg.id,
            "from": msg.sender,
            "text": msg.text,
            "ts": msg.ts,
        }
    return {
        "type": "message",
        "room": msg.room,
        "seq": msg.seq,
        "id": msg.id,
        "from": msg.sender,
        "text": msg.text,
        "meta": msg.meta,
        "ts": msg.ts,
    }


def message_json(msg: Message) -> bytes:
    """The `message` event as compact JSON: the fan-out hot path (same bytes as encode_event)."""
    return orjson.dumps(_message_dict(msg))


def _history_dict(page: HistoryPage) -> dict[str, Any]:
    out = {"type": "history", "room": page.room, "messages": [_message_dict(m) for m in page.messages], "more": page.more}
    if page.ref is not None:
        out["ref"] = page.ref
    return out


def encode_event(event: Event) -> bytes:
    """Compact JSON of the wire form: `type` first, `ref` and `meta` omitted when None.

    Events are built by the server, so a failure here (TypeError/JSONEncodeError) is a
    server bug, not a client error.
    """
    cls = type(event)
    if cls is Message:
        return orjson.dumps(_message_dict(event))
    if cls is Ack:                      # one per stored message: skip the cattrs unstructure
        ack: dict[str, Any] = {"type": "ack", "id": event.id, "room": event.room, "seq": event.seq, "ts": event.ts}
        if event.ref is not None:
            ack["ref"] = event.ref
        return orjson.dumps(ack)
    if cls is HistoryPage:
        return orjson.dumps(_history_dict(event))
    if cls not in _EVENT_CLASSES:
        raise TypeError(f"not an event record: {cls.__name__}")
    return orjson.dumps(_unstructure_event(event))


_EVENT_CLASSES = frozenset(EVENT_TYPES.values())


class StoredLike(Protocol):
    """What `message_from_stored` reads (the store's StoredMessage has these attributes)."""

    room: str
    seq: int
    client_id: str
    sender: str
    text: str
    meta: dict[str, Any] | None
    ts: int


def message_from_stored(stored: StoredLike) -> Message:
    """The `message` event of a stored message (replay, history, offline delivery)."""
    return Message(stored.room, stored.seq, stored.client_id, stored.sender, stored.text, stored.meta, stored.ts)
