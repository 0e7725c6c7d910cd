"""The bus codec is sans-IO: round trips of every record, and garbage never crashes decode."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat_actors.bus import events
from chat_actors.bus.events import (
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    GrantChanged,
    MalformedEvent,
    MembershipChanged,
    MessageCommitted,
    PresenceRelay,
    Probe,
    ReadRelay,
    RoomCreated,
    RoomHead,
    Topic,
    TypingRelay,
    UserEvent,
    decode,
    encode,
)

names = st.text(min_size=1, max_size=40)
counts = st.integers(min_value=0, max_value=(1 << 63) - 1)
json_scalars = st.none() | st.booleans() | st.integers(-(1 << 53), 1 << 53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: The wire JSON of a client event, as the server writes it (compact orjson).
wire_events = st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(orjson.dumps)

any_event = st.one_of(
    st.builds(MessageCommitted, names, names, counts, wire_events),
    st.builds(TypingRelay, names, names, names),
    st.builds(ReadRelay, names, names, names, counts),
    st.builds(PresenceRelay, names, names, names, st.sampled_from(["online", "offline"]), st.none() | counts),
    st.builds(RoomHead, names, names, counts, st.none() | counts),
    st.builds(UserEvent, names, names, wire_events, st.none() | names, st.none() | counts),
    st.builds(GrantChanged, names, names, names),
    st.builds(RoomCreated, names, names, st.sampled_from(["public", "private", "direct"])),
    st.builds(MembershipChanged, names, names, names, st.booleans()),
    st.builds(Probe, names, counts),
)


def test_every_record_kind_is_covered() -> None:
    assert len({cls.KIND for cls in EVENT_TYPES}) == len(EVENT_TYPES) == 10  # type: ignore[attr-defined]


@given(any_event)
def test_round_trip(event: events.BusEvent) -> None:
    data = encode(event)
    assert isinstance(data, bytes)
    assert decode(data) == event
    doc = orjson.loads(data)
    assert doc["k"] == type(event).KIND and doc["origin"] == event.origin  # type: ignore[attr-defined]


@given(st.binary(max_size=200))
def test_decode_of_random_bytes_raises_only_malformed(data: bytes) -> None:
    try:
        decode(data)
    except MalformedEvent:
        pass


@given(st.dictionaries(st.sampled_from(["k", "origin", "room", "user", "seq", "n", "event", "status",
                                        "joined", "room_kind", "x"]),
                       st.sampled_from([kind for kind in (c.KIND for c in EVENT_TYPES)]) | json_values))  # type: ignore[attr-defined]
def test_decode_of_random_documents_raises_only_malformed(doc: dict) -> None:
    try:
        event = decode(orjson.dumps(doc))
    except MalformedEvent:
        return
    assert decode(encode(event)) == event


def test_the_embedded_event_is_a_nested_object_kept_byte_for_byte() -> None:
    wire = orjson.dumps({"type": "message", "room": "lobby", "seq": 5, "text": 'say "hi"\n'})
    data = encode(MessageCommitted("n1", "lobby", 5, wire))
    assert orjson.loads(data)["event"] == orjson.loads(wire)  # not a string inside a string
    assert decode(data).event == wire  # type: ignore[union-attr]


def test_optional_fields_are_omitted_and_unknown_fields_ignored() -> None:
    data = encode(UserEvent("n1", "bob", b'{"type":"x"}'))
    assert "room" not in orjson.loads(data) and "seq" not in orjson.loads(data)
    newer = orjson.dumps({"k": "typing", "origin": "n9", "room": "r", "user": "u", "added_later": [1]})
    assert decode(newer) == TypingRelay("n9", "r", "u")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b'"msg"',
        b'{"origin": "n1"}',
        b'{"k": 1, "origin": "n1"}',
        b'{"k": "unknown", "origin": "n1"}',
        b'{"k": "typing", "origin": "n1", "room": "r"}',
        b'{"k": "typing", "origin": 5, "room": "r", "user": "u"}',
        b'{"k": "read", "origin": "n", "room": "r", "user": "u", "seq": true}',
        b'{"k": "read", "origin": "n", "room": "r", "user": "u", "seq": 1.5}',
        b'{"k": "read", "origin": "n", "room": "r", "user": "u", "seq": 18446744073709551615}',
        b'{"k": "presence", "origin": "n", "room": "r", "user": "u", "status": "away"}',
        b'{"k": "membership", "origin": "n", "room": "r", "user": "u", "joined": 1}',
        b'{"k": "msg", "origin": "n", "room": "r", "seq": 1, "event": "{}"}',
        b'{"k": "msg", "origin": "n", "room": "r", "seq": 1, "event": [1]}',
        b'{"k": "user", "origin": "n", "user": "u", "event": {}, "seq": "1"}',
        b'{"k": "probe", "origin": "n", "n": -1}',
    ],
)
def test_malformed_payloads(data: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode(data)


def test_oversized_payload_is_malformed_without_parsing() -> None:
    with pytest.raises(MalformedEvent, match="over"):
        decode(b" " * (MAX_PAYLOAD_BYTES + 1))


def test_encode_rejects_what_is_not_an_event() -> None:
    with pytest.raises(TypeError):
        encode({"k": "msg"})  # type: ignore[arg-type]


@given(st.sampled_from(["room", "user", "node", "cluster"]), st.text(max_size=30))
def test_topic_keys_round_trip(kind: str, name: str) -> None:
    topic = Topic(kind, name)  # type: ignore[arg-type]
    assert Topic.from_key(topic.key) == topic


def test_topic_constructors_and_bad_keys() -> None:
    assert Topic.room("dm:ann:bob").key == "room:dm:ann:bob"
    assert Topic.from_key("room:dm:ann:bob") == Topic.room("dm:ann:bob")
    assert Topic.user("ann").key == "user:ann"
    assert Topic.node("n1").key == "node:n1"
    assert Topic.cluster().key == "cluster:"
    assert Topic.from_key("nonsense") is None
    assert Topic.from_key("planet:earth") is None
