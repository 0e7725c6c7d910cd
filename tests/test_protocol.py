"""The wire codec: round trips, fuzzing, and the rules of PROTOCOL.md section 3 row by row.

All synchronous: the codec is sans-IO. The expected wire shapes below are written out
independently of `protocol.py` (no reuse of its tables), so a drift on either side shows.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_actors.errors import ErrorCode, ProtocolError, TooLarge
from chat_actors.protocol import (
    MAX_META_DEPTH,
    MAX_INT,
    MAX_SEQ,
    loads_json,
    ROOM_RE,
    USERNAME_RE,
    Limits,
    command_to_wire,
    decode_command,
    decode_event,
    dm_room,
    encode_command,
    encode_event,
    is_valid_room,
    is_valid_username,
    message_from_stored,
    message_json,
    parse_dm_room,
)
from chat_actors.records import (
    Ack,
    Auth,
    Dm,
    ErrorEvent,
    History,
    HistoryPage,
    Join,
    Joined,
    Leave,
    Left,
    Message,
    Ping,
    Pong,
    PresenceEvent,
    PresenceList,
    PresenceMember,
    PresenceQuery,
    Read,
    ReadEvent,
    RoomEntry,
    Send,
    Synced,
    Typing,
    TypingEvent,
    Welcome,
    WelcomeLimits,
)

LIMITS = Limits()

#: wire type of each command, written out here on purpose (not taken from the records)
WIRE_TYPE: dict[type, str] = {
    Auth: "auth",
    Join: "join",
    Leave: "leave",
    Send: "send",
    Dm: "dm",
    History: "history",
    Typing: "typing",
    Read: "read",
    PresenceQuery: "presence",
    Ping: "ping",
}
TYPES = sorted(WIRE_TYPE.values())
REQUIRED: dict[str, tuple[str, ...]] = {
    "auth": ("token",),
    "join": ("room",),
    "leave": ("room",),
    "send": ("room", "id", "text"),
    "dm": ("to", "id", "text"),
    "history": ("room",),
    "typing": ("room",),
    "read": ("room", "seq"),
    "presence": ("room",),
    "ping": (),
}
ALL_FIELDS = {"type", "ref", "token", "room", "since", "id", "text", "meta", "to", "before", "after", "limit", "seq"}


def wire_of(cmd: Any) -> dict[str, Any]:
    """Test-side encoder: what a client following PROTOCOL.md would send for `cmd`."""
    out: dict[str, Any] = {"type": WIRE_TYPE[type(cmd)]}
    for field in attrs.fields(type(cmd)):
        value = getattr(cmd, field.name)
        if value is not None:
            out[field.name] = value
    return out


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def decode(obj: Any, limits: Limits = LIMITS) -> Any:
    return decode_command(orjson.dumps(obj), limits)


def reject(obj: Any, limits: Limits = LIMITS) -> ProtocolError:
    data = obj if isinstance(obj, (str, bytes)) else orjson.dumps(obj)
    with pytest.raises(ProtocolError) as info:
        decode_command(data, limits)
    return info.value


def outcome(data: Any, limits: Limits = LIMITS) -> Any:
    """Decode; the only acceptable outcomes are a command or a ProtocolError/TooLarge."""
    try:
        cmd = decode_command(data, limits)
    except ProtocolError as exc:  # TooLarge is a ProtocolError
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
        assert exc.ref is None or type(exc.ref) in (str, int)
        return exc
    assert type(cmd) in WIRE_TYPE
    return cmd


# --------------------------------------------------------------------------- strategies

usernames = st.from_regex(r"[A-Za-z0-9_.-]{3,32}", fullmatch=True)
plain_rooms = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda r: r not in (".", ".."))
dm_rooms = st.tuples(usernames, usernames).filter(lambda p: p[0] != p[1]).map(lambda p: dm_room(*p))
rooms = st.one_of(plain_rooms, dm_rooms)
client_ids = st.text(min_size=1, max_size=64)
texts = st.text(min_size=1, max_size=200)
seqs = st.integers(0, MAX_SEQ)
opt_seqs = st.none() | seqs
refs = st.none() | st.text(max_size=64) | st.integers(-MAX_INT, MAX_INT)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metas = st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=5).filter(
    lambda m: len(orjson.dumps(m)) <= 1024
)

commands = st.one_of(
    st.builds(Auth, token=st.text(min_size=1, max_size=200), ref=refs),
    st.builds(Join, room=rooms, since=opt_seqs, ref=refs),
    st.builds(Leave, room=rooms, ref=refs),
    st.builds(Send, room=rooms, id=client_ids, text=texts, meta=metas, ref=refs),
    st.builds(Dm, to=usernames, id=client_ids, text=texts, meta=metas, ref=refs),
    st.builds(History, room=rooms, before=opt_seqs, after=opt_seqs, limit=st.integers(1, 200), ref=refs),
    st.builds(Typing, room=rooms, ref=refs),
    st.builds(Read, room=rooms, seq=seqs, ref=refs),
    st.builds(PresenceQuery, room=rooms, ref=refs),
    st.builds(Ping, ref=refs),
)

small_ints = st.integers(0, 2**53)
messages = st.builds(
    Message, room=rooms, seq=small_ints, id=client_ids, sender=usernames, text=texts, meta=metas, ts=small_ints
)
numbers = st.integers(0, 10**6) | st.floats(0.001, 10**6, allow_nan=False)
events = st.one_of(
    st.builds(
        Welcome,
        user=usernames,
        session=st.text(max_size=20),
        server=st.just("chat-actors/0.1.0"),
        heartbeat=numbers,
        limits=st.builds(WelcomeLimits, max_frame_bytes=small_ints, max_text_chars=small_ints, rate_per_second=numbers, rate_burst=small_ints),
        rooms=st.lists(st.builds(RoomEntry, room=rooms, seq=small_ints, read=small_ints), max_size=3).map(tuple),
    ),
    st.just(Synced()),
    st.builds(Joined, room=rooms, seq=small_ints, members=st.lists(usernames, max_size=3).map(tuple), recovered=st.booleans(), ref=refs),
    st.builds(Left, room=rooms, ref=refs),
    st.builds(Ack, id=client_ids, room=rooms, seq=small_ints, ts=small_ints, ref=refs),
    messages,
    st.builds(HistoryPage, room=rooms, messages=st.lists(messages, max_size=3).map(tuple), more=st.booleans(), ref=refs),
    st.builds(TypingEvent, room=rooms, user=usernames),
    st.builds(ReadEvent, room=rooms, user=usernames, seq=small_ints),
    st.builds(PresenceEvent, room=rooms, user=usernames, status=st.sampled_from(["online", "offline"])),
    st.builds(PresenceList, room=rooms, members=st.lists(st.builds(PresenceMember, user=usernames, connections=small_ints), max_size=3).map(tuple), ref=refs),
    st.builds(Pong, ts=small_ints, ref=refs),
    st.builds(ErrorEvent, code=st.sampled_from([c.value for c in ErrorCode]), message=st.text(max_size=40), ref=refs),
)


def _with_ref(out: dict[str, Any], ref: Any) -> dict[str, Any]:
    if ref is not None:
        out["ref"] = ref
    return out


def expected_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "message", "room": m.room, "seq": m.seq, "id": m.id, "from": m.sender, "text": m.text}
    if m.meta is not None:
        out["meta"] = m.meta
    out["ts"] = m.ts
    return out


def expected_event(ev: Any) -> dict[str, Any]:
    """The wire dict of each event, written out from PROTOCOL.md sections 4-7."""
    if isinstance(ev, Welcome):
        lim = ev.limits
        return {
            "type": "welcome", "user": ev.user, "session": ev.session, "server": ev.server,
            "heartbeat": ev.heartbeat,
            "limits": {"max_frame_bytes": lim.max_frame_bytes, "max_text_chars": lim.max_text_chars,
                       "rate_per_second": lim.rate_per_second, "rate_burst": lim.rate_burst},
            "rooms": [{"room": r.room, "seq": r.seq, "read": r.read} for r in ev.rooms],
        }
    if isinstance(ev, Synced):
        return {"type": "synced"}
    if isinstance(ev, Joined):
        return _with_ref({"type": "joined", "room": ev.room, "seq": ev.seq, "members": list(ev.members), "recovered": ev.recovered}, ev.ref)
    if isinstance(ev, Left):
        return _with_ref({"type": "left", "room": ev.room}, ev.ref)
    if isinstance(ev, Ack):
        return _with_ref({"type": "ack", "id": ev.id, "room": ev.room, "seq": ev.seq, "ts": ev.ts}, ev.ref)
    if isinstance(ev, Message):
        return expected_message(ev)
    if isinstance(ev, HistoryPage):
        return _with_ref({"type": "history", "room": ev.room, "messages": [expected_message(m) for m in ev.messages], "more": ev.more}, ev.ref)
    if isinstance(ev, TypingEvent):
        return {"type": "typing", "room": ev.room, "user": ev.user}
    if isinstance(ev, ReadEvent):
        return {"type": "read", "room": ev.room, "user": ev.user, "seq": ev.seq}
    if isinstance(ev, PresenceEvent):
        return {"type": "presence", "room": ev.room, "user": ev.user, "status": ev.status}
    if isinstance(ev, PresenceList):
        return _with_ref({"type": "presence_list", "room": ev.room, "members": [{"user": m.user, "connections": m.connections} for m in ev.members]}, ev.ref)
    if isinstance(ev, Pong):
        return _with_ref({"type": "pong", "ts": ev.ts}, ev.ref)
    if isinstance(ev, ErrorEvent):
        return _with_ref({"type": "error", "code": ev.code, "message": ev.message}, ev.ref)
    raise AssertionError(ev)


# --------------------------------------------------------------------------- round trips


@given(commands)
def test_command_round_trip(cmd: Any) -> None:
    wire = wire_of(cmd)
    encoded = orjson.dumps(wire)
    assert decode_command(encoded, LIMITS) == cmd
    assert decode_command(encoded.decode(), LIMITS) == cmd  # str input too


@given(commands)
def test_command_to_wire_is_the_protocol_shape(cmd: Any) -> None:
    wire = command_to_wire(cmd)
    assert wire == wire_of(cmd)
    assert next(iter(wire)) == "type"
    assert decode_command(encode_command(cmd), LIMITS) == cmd


@given(events)
def test_event_wire_shape(ev: Any) -> None:
    data = encode_event(ev)
    assert isinstance(data, bytes)
    obj = orjson.loads(data)
    assert orjson.dumps(obj) == data  # compact
    assert obj == expected_event(ev)
    assert next(iter(obj)) == "type"
    assert decode_event(data) == ev


@given(messages)
def test_message_json_same_bytes_as_encode_event(msg: Message) -> None:
    assert message_json(msg) == encode_event(msg)
    obj = orjson.loads(message_json(msg))
    assert list(obj) == [k for k in ("type", "room", "seq", "id", "from", "text", "meta", "ts") if k in obj]
    assert ("meta" in obj) == (msg.meta is not None)


def test_message_from_stored() -> None:
    @attrs.frozen
    class Stored:  # the attributes of the store's StoredMessage
        room: str
        seq: int
        client_id: str
        sender: str
        text: str
        meta: dict | None
        ts: int

    stored = Stored("general", 7, "c1", "alice", "hi", {"k": 1}, 1_700_000_000_000)
    assert message_from_stored(stored) == Message("general", 7, "c1", "alice", "hi", {"k": 1}, 1_700_000_000_000)


def test_welcome_example_of_section_4() -> None:
    ev = Welcome(
        user="alice", session="s1", server="chat-actors/0.1.0", heartbeat=30.0,
        limits=WelcomeLimits(max_frame_bytes=65536, max_text_chars=4000, rate_per_second=20.0, rate_burst=40),
        rooms=[RoomEntry("general", 120, 110)],
    )
    assert encode_event(ev) == (
        b'{"type":"welcome","user":"alice","session":"s1","server":"chat-actors/0.1.0",'
        b'"heartbeat":30,"limits":{"max_frame_bytes":65536,"max_text_chars":4000,'
        b'"rate_per_second":20,"rate_burst":40},"rooms":[{"room":"general","seq":120,"read":110}]}'
    )


def test_error_event_takes_error_codes() -> None:
    data = encode_event(ErrorEvent(ErrorCode.TOO_LARGE, "too big", ref=3))
    assert data == b'{"type":"error","code":"too_large","message":"too big","ref":3}'
    assert encode_event(ErrorEvent("bad_request", "x")) == b'{"type":"error","code":"bad_request","message":"x"}'


def test_encode_event_refuses_non_events() -> None:
    with pytest.raises(TypeError):
        encode_event(Ping())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=100))  # lone surrogates included
def test_fuzz_arbitrary_text(data: str) -> None:
    outcome(data)
    outcome('{"type":"send","room":"g","id":"1","text":"' + data + '"}')


@settings(max_examples=300)
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    result = outcome(orjson.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"type": st.sampled_from(TYPES)}, optional={f: json_values | seqs | rooms for f in sorted(ALL_FIELDS - {"type"})}))
def test_fuzz_known_types_random_fields(obj: dict[str, Any]) -> None:
    outcome(orjson.dumps(obj))


INT_FIELDS = {"since", "before", "after", "seq", "limit"}
i64 = st.integers(-(2**63), 2**63 - 1)  # what orjson can put in a frame
wrong_for_int = (
    st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.lists(i64, max_size=2)
    | st.dictionaries(st.text(max_size=3), i64, max_size=2)
    | st.integers(-(2**63), -1)
    | st.integers(MAX_SEQ + 1, 2**64 - 1)
)
not_str = st.booleans() | i64 | st.floats(allow_nan=False, allow_infinity=False) | st.lists(st.text(max_size=3), max_size=2) | st.dictionaries(st.text(max_size=3), i64, max_size=2)


def wrong_values(field: str) -> st.SearchStrategy[Any]:
    """Values PROTOCOL.md refuses for `field` (wrong JSON type or out of range)."""
    if field in INT_FIELDS:
        extra = st.integers(201, 10**6) | st.just(0) if field == "limit" else st.nothing()
        return wrong_for_int | extra | st.none()  # null is not an integer
    if field == "type":
        return not_str | st.text(max_size=12).filter(lambda s: s not in TYPES)
    if field == "ref":
        return st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.lists(i64, max_size=2) | st.dictionaries(st.text(max_size=3), i64, max_size=2) | st.text(min_size=65, max_size=80)
    if field == "meta":
        return not_str.filter(lambda v: not isinstance(v, dict)) | st.text(max_size=5) | st.dictionaries(st.just("k"), st.text(min_size=1100, max_size=1100), min_size=1)
    if field == "room":
        return not_str | st.none() | st.text(max_size=70).filter(lambda s: not is_valid_room(s)) | st.tuples(usernames, usernames).filter(lambda p: p[0] > p[1]).map(lambda p: f"dm:{p[0]}:{p[1]}")
    if field == "to":
        return not_str | st.none() | st.text(max_size=40).filter(lambda s: not is_valid_username(s))
    if field == "id":
        return not_str | st.none() | st.just("") | st.text(min_size=65, max_size=70)
    if field == "text":
        return not_str | st.none() | st.just("") | st.just("x" * (LIMITS.max_text_chars + 1))
    if field == "token":
        return not_str | st.none() | st.just("")
    raise AssertionError(field)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.data())
def test_fuzz_one_field_mutated_is_rejected(cmd: Any, data: st.DataObject) -> None:
    wire = wire_of(cmd)
    field = data.draw(st.sampled_from(sorted(set(wire) | {"ref"})), label="field")
    wire[field] = data.draw(wrong_values(field), label="value")
    error = outcome(orjson.dumps(wire))
    assert isinstance(error, ProtocolError), (field, wire)
    assert field in error.message
    # the error can be correlated unless the ref itself (or the whole frame) was the problem
    assert error.ref == (None if field == "ref" else cmd.ref)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ALL_FIELDS), json_values, max_size=5))
def test_unknown_fields_are_ignored(cmd: Any, extra: dict[str, Any]) -> None:
    assert decode({**extra, **wire_of(cmd)}) == cmd


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


SEND_HEAD = '{"type":"send","room":"g","id":"1","text":"x","meta":'


HOSTILE = [
        "", b"", "   ", "[" * 100_000, "{" * 100_000, '{"a":' * 5000,
        _nested(2000), '{"type":"send","x":' + _nested(1500) + "}",
        SEND_HEAD + '{"a":' + _nested(300) + "}}",  # deeper than orjson encodes
        SEND_HEAD + '{"a":' + _nested(MAX_META_DEPTH + 1) + "}}",
        "1" * 5000, '{"type":"read","room":"g","seq":' + "9" * 400 + "}",
        '{"type":"read","room":"g","seq":18446744073709551616}',
        '{"type":"read","room":"g","seq":1e400}', '{"type":"read","room":"g","seq":NaN}',
        '{"type":"read","room":"g","seq":Infinity}', '{"type":"read","room":"g","seq":-Infinity}',
        '{"type":"ping","ref":' + "9" * 400 + "}", '{"type":"ping","ref":1e999}',
        '{"type":"send","room":"g","id":"1","text":"\\ud800"}',  # escaped lone surrogate
        '{"type":"send","room":"g","id":"1","text":"\\udc00\\ud800"}',
        '{"type":"send","room":"g","id":"1","text":"\ud800"}',  # real lone surrogate in str input
        "\ud83d", b"\xff\xfe\x00", b"\xc0\xaf", b'{"type":"ping","ref":"\xed\xa0\x80"}',
        b"\xef\xbb\xbf{}", '{"type":"ping"}\x00', '{"type":"ping"} {"type":"ping"}',
        '{"type":"ping",}', "{'type':'ping'}", '{"type":"ping"', None, 5,
]


@pytest.mark.parametrize("data", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_inputs_are_protocol_errors(data: Any) -> None:
    assert isinstance(outcome(data), ProtocolError)


def test_meta_at_the_depth_bound_is_accepted() -> None:
    cmd = decode_command(SEND_HEAD + '{"a":' + _nested(MAX_META_DEPTH - 1) + "}}", LIMITS)
    assert isinstance(cmd, Send) and cmd.meta is not None
    # a stored meta re-encodes inside the deepest event that carries it
    msg = Message("g", 1, "1", "alice", "x", cmd.meta, 1)
    assert orjson.loads(encode_event(HistoryPage("g", (msg,), False)))["messages"][0]["meta"] == cmd.meta


# --------------------------------------------------------------------------- section 3, row by row


@pytest.mark.parametrize("data", ["not json", "{", "{'type': 'ping'}", '{"type":"ping"} trailing', "nul"])
def test_not_json(data: str) -> None:
    error = reject(data)
    assert type(error) is ProtocolError and error.code == ErrorCode.BAD_REQUEST and error.ref is None


@pytest.mark.parametrize("value", [[], [{"type": "ping"}], 1, 1.5, "ping", None, True])
def test_not_an_object(value: Any) -> None:
    assert reject(value).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("kind", ["nope", "PING", "Ping", "presence_list", "message", "welcome", "", "send "])
def test_unknown_type(kind: str) -> None:
    error = reject({"type": kind, "ref": "r1"})
    assert "type" in error.message and error.ref == "r1"


@pytest.mark.parametrize("kind", [None, 1, True, ["ping"], {"ping": 1}])
def test_missing_or_non_string_type(kind: Any) -> None:
    error = reject({"type": kind, "ref": 9})
    assert "invalid field 'type'" in error.message and error.ref == 9
    assert "missing field 'type'" in reject({"ref": 9}).message
    assert "missing field 'type'" in reject({}).message


VALID = {
    "auth": {"type": "auth", "token": "t"},
    "join": {"type": "join", "room": "general"},
    "leave": {"type": "leave", "room": "general"},
    "send": {"type": "send", "room": "general", "id": "c1", "text": "hi"},
    "dm": {"type": "dm", "to": "bob", "id": "c1", "text": "hi"},
    "history": {"type": "history", "room": "general"},
    "typing": {"type": "typing", "room": "general"},
    "read": {"type": "read", "room": "general", "seq": 3},
    "presence": {"type": "presence", "room": "general"},
    "ping": {"type": "ping"},
}


def test_minimal_frames_decode() -> None:
    assert [decode(VALID[t]) for t in TYPES] == [
        Auth("t"), Dm("bob", "c1", "hi"), History("general"), Join("general"), Leave("general"),
        Ping(), PresenceQuery("general"), Read("general", 3), Send("general", "c1", "hi"), Typing("general"),
    ]


@pytest.mark.parametrize(("kind", "field"), [(t, f) for t in TYPES for f in REQUIRED[t]])
def test_missing_required_field_names_it(kind: str, field: str) -> None:
    obj = {**VALID[kind], "ref": "abc"}
    del obj[field]
    error = reject(obj)
    assert type(error) is ProtocolError and f"'{field}'" in error.message and error.ref == "abc"
    error = reject({**obj, field: None})  # null is not a value for a required field
    assert f"'{field}'" in error.message and error.ref == "abc"


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("auth", "token", ""), ("auth", "token", 5), ("auth", "token", ["t"]),
        ("join", "room", 5), ("join", "since", -1), ("join", "since", 1.0), ("join", "since", "1"),
        ("join", "since", True), ("join", "since", False), ("join", "since", MAX_SEQ + 1),
        ("send", "id", ""), ("send", "id", "x" * 65), ("send", "id", 12), ("send", "text", ""),
        ("send", "text", 5), ("send", "text", ["hi"]), ("send", "meta", []), ("send", "meta", "m"),
        ("send", "meta", 1), ("send", "meta", True),
        ("dm", "to", "al"), ("dm", "to", "x" * 33), ("dm", "to", "bad name"), ("dm", "to", "dm:a:b"),
        ("dm", "to", 7), ("history", "before", -5), ("history", "after", 2.5), ("history", "limit", 0),
        ("history", "limit", 201), ("history", "limit", -1), ("history", "limit", 50.0),
        ("history", "limit", "50"), ("history", "limit", True), ("read", "seq", 1.0), ("read", "seq", "3"),
        ("read", "seq", -1), ("read", "seq", True), ("typing", "room", ""), ("presence", "room", None),
    ],
)
def test_mistyped_or_out_of_range_field(kind: str, field: str, value: Any) -> None:
    error = reject({**VALID[kind], field: value, "ref": 42})
    assert type(error) is ProtocolError and error.code == ErrorCode.BAD_REQUEST
    assert f"'{field}'" in error.message and error.ref == 42


@pytest.mark.parametrize("ref", [1.0, 0.0, 2.5, True, False, None, "x" * 65, "😀" * 65, [], ["r"], {"r": 1}])
def test_invalid_ref_is_rejected_without_ref(ref: Any) -> None:
    for kind in TYPES:
        error = reject({**VALID[kind], "ref": ref})
        assert "'ref'" in error.message and error.ref is None


def test_ref_one_point_zero_in_the_text_is_rejected() -> None:
    assert reject('{"type":"ping","ref":1.0}').ref is None
    assert reject('{"type":"ping","ref":1e0}').ref is None


@pytest.mark.parametrize("ref", ["", "r", "x" * 64, "😀" * 64, 0, 7, -3, MAX_INT, -MAX_INT])
def test_valid_refs(ref: Any) -> None:
    for kind in TYPES:
        assert decode({**VALID[kind], "ref": ref}).ref == ref


def test_null_is_a_wrong_value_except_for_meta() -> None:
    # PROTOCOL section 3: `ref` is a string or an integer; null is neither
    assert reject({"type": "ping", "ref": None}).ref is None
    for kind, field in [("join", "since"), ("history", "before"), ("history", "after"), ("history", "limit")]:
        error = reject({**VALID[kind], field: None, "ref": "n"})
        assert f"'{field}'" in error.message and error.ref == "n"
    # an unset optional object is commonly serialised as null: it means "no meta"
    assert decode({**VALID["send"], "meta": None}) == Send("general", "c1", "hi")
    assert decode({**VALID["dm"], "meta": None}) == Dm("bob", "c1", "hi")


def test_error_carries_ref_when_valid() -> None:
    assert reject({"type": "send", "room": "bad room", "id": "1", "text": "x", "ref": "abc"}).ref == "abc"
    assert reject({"type": "send", "room": "g", "id": "1", "text": "", "ref": 5}).ref == 5
    assert reject({"type": "send", "room": "g", "id": "1", "text": "x" * 4001, "ref": 5}).ref == 5
    assert reject({"type": "nope", "ref": 5}).ref == 5
    assert reject({"type": "send", "room": "bad room", "id": "1", "text": "x", "ref": 5.0}).ref is None
    assert reject({"type": "send", "room": "bad room", "id": "1", "text": "x"}).ref is None


def test_text_limit_counts_code_points() -> None:
    emoji = "😀"  # 1 code point, 4 UTF-8 bytes, 2 UTF-16 units
    assert decode({**VALID["send"], "text": emoji * 4000}).text == emoji * 4000
    error = reject({**VALID["send"], "text": emoji * 4001, "ref": "t"})
    assert isinstance(error, TooLarge) and error.code == ErrorCode.TOO_LARGE and error.ref == "t"
    small = Limits(max_text_chars=6)
    assert decode({**VALID["dm"], "text": "e\u0301" * 3}, small).text == "e\u0301" * 3  # 6 code points
    assert isinstance(reject({**VALID["dm"], "text": "é" * 7}, small), TooLarge)
    assert decode({**VALID["send"], "text": "x"}, Limits(max_text_chars=1)).text == "x"


def test_empty_text_is_bad_request_not_too_large() -> None:
    error = reject({**VALID["send"], "text": ""})
    assert type(error) is ProtocolError and error.code == ErrorCode.BAD_REQUEST


def _meta_of_size(size: int, char: str = "x") -> dict[str, str]:
    overhead = len(orjson.dumps({"k": ""}))
    width = len(char.encode())
    assert (size - overhead) % width == 0
    meta = {"k": char * ((size - overhead) // width)}
    assert len(orjson.dumps(meta)) == size
    return meta


@pytest.mark.parametrize("char", ["x", "é", "😀"])
def test_meta_limit_is_compact_json_utf8_bytes(char: str) -> None:
    size = 1024  # {"k":""} is 8 bytes, 1016 is a multiple of 1, 2 and 4
    meta = _meta_of_size(size, char)
    for kind in ("send", "dm"):
        assert decode({**VALID[kind], "meta": meta}).meta == meta
    over = _meta_of_size(size + len(char.encode()), char)
    for kind in ("send", "dm"):
        error = reject({**VALID[kind], "meta": over, "ref": 1})
        assert isinstance(error, TooLarge) and error.code == ErrorCode.TOO_LARGE and error.ref == 1


def test_meta_exactly_1024_bytes_ok_1025_too_large() -> None:
    meta = _meta_of_size(1024)
    # whitespace in the frame does not count: the rule is about the compact encoding
    spaced = '{"type":"send","room":"g","id":"1","text":"x","meta":{ "k" :  "' + meta["k"] + '" }}'
    assert decode_command(spaced, LIMITS).meta == meta
    assert isinstance(reject({**VALID["send"], "meta": _meta_of_size(1025)}), TooLarge)
    assert decode({**VALID["send"], "meta": {}}).meta == {}
    assert decode({**VALID["send"], "meta": None}).meta is None
    escaped = {"k": "\n" * 508}  # each newline is 2 bytes (\n) in compact JSON: 8 + 1016
    assert decode({**VALID["send"], "meta": escaped}).meta == escaped
    assert isinstance(reject({**VALID["send"], "meta": {"k": "\n" * 509}}), TooLarge)
    assert decode({**VALID["send"], "meta": _meta_of_size(100)}, Limits(max_meta_bytes=100)).meta is not None
    assert isinstance(reject({**VALID["send"], "meta": _meta_of_size(101)}, Limits(max_meta_bytes=100)), TooLarge)


GOOD_ROOMS = ["general", "a", "A-b_c.d", "...", ".a", "x" * 64, "0", "dm:alice:bob", "dm:Bob:alice", "dm:abc:abd", "dm:a.b:a_b"]
BAD_ROOMS = [
    "", "x" * 65, "has space", "général", "room\n", "tab\t", "dm:bob:alice", "dm:alice:alice", "dm:al:bob",
    "dm:alice:bob:carol", "dm:alice", "dm::bob", "dm:alice:", "DM:alice:bob", "dm:alice:bob\n",
    "dm:alice:" + "b" * 33, "dm:alice:bób", "a/b", "a:b", "#general", ".", "..",
]


@pytest.mark.parametrize("room", GOOD_ROOMS)
def test_good_room_names(room: str) -> None:
    assert is_valid_room(room)
    for kind in ("join", "leave", "send", "history", "typing", "read", "presence"):
        assert decode({**VALID[kind], "room": room}).room == room


@pytest.mark.parametrize("room", BAD_ROOMS)
def test_bad_room_names(room: str) -> None:
    assert not is_valid_room(room)
    for kind in ("join", "leave", "send", "history", "typing", "read", "presence"):
        error = reject({**VALID[kind], "room": room, "ref": "x"})
        assert "'room'" in error.message and error.ref == "x"


def test_history_limit_and_cursors() -> None:
    assert decode(VALID["history"]).limit == 50
    assert decode({**VALID["history"], "limit": 1}).limit == 1
    assert decode({**VALID["history"], "limit": 200}).limit == 200
    for bad in (0, 201, None):
        assert "'limit'" in reject({**VALID["history"], "limit": bad}).message
    cmd = decode({**VALID["history"], "before": 10, "after": 0, "limit": 5, "ref": "h"})
    assert cmd == History("general", before=10, after=0, limit=5, ref="h")


def test_seq_bounds() -> None:
    assert decode({**VALID["read"], "seq": 0}).seq == 0
    assert decode({**VALID["read"], "seq": MAX_SEQ}).seq == MAX_SEQ
    assert decode({**VALID["join"], "since": 0}) == Join("general", since=0)


def test_dm_to_any_pattern_username() -> None:
    assert decode({**VALID["dm"], "to": "system"}).to == "system"  # existence is checked by the server
    assert decode({**VALID["dm"], "to": "a" * 32}).to == "a" * 32


def test_unknown_fields_ignored_explicitly() -> None:
    assert decode({**VALID["send"], "extra": [1, {"x": None}], "from": "mallory", "seq": 9}) == Send("general", "c1", "hi")
    assert decode({"type": "ping", "room": 5, "text": None}) == Ping()


def test_str_and_bytes_input() -> None:
    text = '{"type":"send","room":"general","id":"c1","text":"héllo 😀"}'
    assert decode_command(text, LIMITS) == decode_command(text.encode(), LIMITS) == Send("general", "c1", "héllo 😀")


# --------------------------------------------------------------------------- names


def test_dm_room_orders_by_code_point() -> None:
    assert dm_room("bob", "alice") == dm_room("alice", "bob") == "dm:alice:bob"
    assert dm_room("bob", "Alice") == "dm:Alice:bob"  # "A" < "b"
    assert dm_room("a_b", "a.b") == "dm:a.b:a_b"  # "." (46) < "_" (95)


@given(usernames, usernames)
def test_dm_room_parse_round_trip(a: str, b: str) -> None:
    name = dm_room(a, b)
    if a == b:
        assert parse_dm_room(name) is None and not is_valid_room(name)
    else:
        assert parse_dm_room(name) == (min(a, b), max(a, b))
        assert is_valid_room(name)


def test_parse_dm_room_rejects() -> None:
    for name in ["general", "dm:bob:alice", "dm:alice", "dm:alice:bob:x", None, 5, "dm:al:bob"]:
        assert parse_dm_room(name) is None


def test_patterns() -> None:
    assert ROOM_RE.match("general") and not ROOM_RE.match("general\n") and not ROOM_RE.match("x" * 65)
    assert USERNAME_RE.match("alice") and not USERNAME_RE.match("alice\n") and not USERNAME_RE.match("al")
    assert is_valid_username("a.b-c_9") and not is_valid_username("dm:x") and not is_valid_username(None)
    assert not is_valid_room(None) and not is_valid_room(7)


# --------------------------------------------------------------------------- number range (section 3)

OUT_OF_RANGE = ["9007199254740992", "-9007199254740992", "18446744073709551616", "1" + "0" * 29,
                "1." + "0" * 40 + "1", "0." + "0" * 31 + "1"]
#: orjson refuses these as JSON at all (infinite as a double): bad_request as well
OVERFLOWING = ["1e400", "-1e400"]


@pytest.mark.parametrize("token", OUT_OF_RANGE)
def test_meta_number_out_of_range_or_too_long_is_refused(token: str) -> None:
    """orjson reads 2**64 as 1.8446744073709552e+19: refused instead of stored changed."""
    frame = '{"type":"send","room":"r","id":"m","text":"t","ref":3,"meta":{"a":[{"n":%s}]}}' % token
    error = reject(frame)
    assert error.code == ErrorCode.BAD_REQUEST and "'meta'" in error.message and error.ref == 3


@pytest.mark.parametrize("token", OUT_OF_RANGE + OVERFLOWING)
def test_number_out_of_range_anywhere_in_a_frame_is_refused(token: str) -> None:
    for frame in ('{"type":"join","room":"r","since":%s}', '{"type":"read","room":"r","seq":%s}',
                  '{"type":"ping","ref":%s}', '{"type":"ping","extra":[%s]}'):
        assert reject(frame % token).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("value", [MAX_INT, -MAX_INT, 0, 1.5, -2.25e10, 12345678901234567890.0])
def test_numbers_in_range_keep_their_value(value: Any) -> None:
    cmd = decode({"type": "send", "room": "r", "id": "m", "text": "t", "meta": {"v": value, "l": [value]}})
    assert cmd.meta == {"v": value, "l": [value]}
    assert type(cmd.meta["v"]) is type(value)


def test_loads_json_applies_the_number_rules() -> None:
    assert loads_json(b'{"a":[1,2.5,{"b":%d}]}' % MAX_INT) == {"a": [1, 2.5, {"b": MAX_INT}]}
    for bad in (b'{"a":18446744073709551616}', b"[1e999]", b"9007199254740992", b"{", b'{"a":1' + b"0" * 40 + b"}"):
        with pytest.raises(ProtocolError):
            loads_json(bad)


def test_deep_nesting_with_a_float_is_a_protocol_error_not_a_crash() -> None:
    deep = "[" * 1000 + "1.5" + "]" * 1000
    try:
        loads_json(deep)
    except ProtocolError:
        pass
