"""chat_actors.frames without a socket: server frame encoding and the fast client-frame parser.

wsproto is the oracle: what the encoder writes it reads as one message, what the parser takes
it would read the same, and every frame the parser does not take reaches it untouched. How
the transport answers those frames on the wire (1002, 1007, 1009) is in test_transport.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Ping, Pong, TextMessage

from chat_actors.frames import (
    BINARY_FIN,
    FIN,
    LENGTH_16,
    LENGTH_64,
    LENGTH_BITS,
    MASK_BIT,
    MAX_16BIT_LENGTH,
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    PING_FIN,
    PONG_FIN,
    TEXT_FIN,
    encode_binary_frame,
    encode_text_frame,
    parse_client_frames,
)

LIMIT = 4096                    # max_frame_bytes of most tests: under the 16-bit lengths
KEY = bytes((0x37, 0xFA, 0x21, 0x3D))


def masked(frame: bytes, key: bytes = KEY) -> bytes:
    """An unmasked frame as a client sends it: the mask bit set, the key after the length."""
    head = 2 + {LENGTH_16: 2, LENGTH_64: 8}.get(frame[1] & LENGTH_BITS, 0)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(frame[head:]))
    return bytes((frame[0], frame[1] | MASK_BIT)) + frame[2:head] + key + body


def short(first: int, payload: bytes = b"") -> bytes:
    """A masked frame with a 7-bit length and any first byte (opcode, FIN and RSV bits)."""
    return masked(bytes((first, len(payload))) + payload)


def text(message: str) -> bytes:
    return masked(encode_text_frame(message.encode()))


def parse_in_pieces(data: bytes, cuts: list[int], limit: int = LIMIT) -> tuple[list, bytes, bool]:
    """Parse `data` read in pieces ending at `cuts`, as the transport does: the rest of a cut
    frame goes before the next piece, and after a fallback everything goes to wsproto."""
    messages: list[str | bytes] = []
    rest = b""
    bounds = [0, *cuts, len(data)]
    for start, stop in zip(bounds, bounds[1:]):
        taken, rest, fallback = parse_client_frames(rest + data[start:stop], limit)
        messages += taken
        if fallback:
            return messages, rest + data[stop:], True
    return messages, rest, False


def wsproto_reads(data: bytes) -> list[str | bytes]:
    """What wsproto makes of the same client bytes, in the parser's terms (pongs leave nothing)."""
    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(data)
    out: list[str | bytes] = []
    for event in conn.events():
        if isinstance(event, TextMessage):
            assert event.message_finished
            out.append(event.data)
        elif isinstance(event, Ping):
            out.append(event.payload)
        else:
            assert isinstance(event, Pong), event
    return out


# --- encoding ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_encoded_frames_parse_as_one_message(size: int) -> None:
    conn = Connection(ConnectionType.CLIENT)     # a client past its handshake
    payload = b"a" * size
    conn.receive_data(encode_text_frame(payload) + encode_binary_frame(payload))
    events = list(conn.events())
    assert [type(e) for e in events] == [TextMessage, BytesMessage]
    assert events[0].data == payload.decode() and events[0].message_finished
    assert events[1].data == payload and events[1].message_finished


@pytest.mark.parametrize("size, length_bytes", [
    (0, bytes((0,))),
    (125, bytes((125,))),
    (126, bytes((LENGTH_16, 0, 126))),
    (MAX_16BIT_LENGTH, bytes((LENGTH_16, 0xFF, 0xFF))),
    (MAX_16BIT_LENGTH + 1, bytes((LENGTH_64, 0, 0, 0, 0, 0, 1, 0, 0))),
    (5_000_000, bytes((LENGTH_64,)) + (5_000_000).to_bytes(8, "big")),
])
def test_header_uses_the_shortest_length_form(size: int, length_bytes: bytes) -> None:
    payload = b"z" * size
    assert encode_text_frame(payload) == bytes((FIN | OP_TEXT,)) + length_bytes + payload
    assert encode_binary_frame(payload) == bytes((FIN | OP_BINARY,)) + length_bytes + payload


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 125, 126, 127, 4097, MAX_16BIT_LENGTH])
def test_what_the_encoder_writes_the_parser_reads_back_once_masked(size: int) -> None:
    message = "é" * (size // 2) + "x" * (size % 2)
    frame = masked(encode_text_frame(message.encode()))
    assert parse_client_frames(frame, MAX_16BIT_LENGTH) == ([message], b"", False)


def test_a_64_bit_length_goes_to_wsproto_whatever_the_limit() -> None:
    frame = masked(encode_text_frame(b"x" * (MAX_16BIT_LENGTH + 1)))
    assert parse_client_frames(frame, 1 << 30) == ([], frame, True)


# --- the parser: frames it takes ----------------------------------------------------------

MIXED = [
    (text("hello"), "hello"),
    (short(PING_FIN, b"are you there"), b"are you there"),
    (short(PONG_FIN, b"yes"), None),
    (text(""), ""),
    (text("ü" * 200), "ü" * 200),                 # a 16-bit length
    (short(PING_FIN), b""),
    (text("x" * 127), "x" * 127),                 # 127 as a 16-bit length, not the 64-bit marker
    (short(PONG_FIN), None),
    (text("end"), "end"),
]
MIXED_BYTES = b"".join(frame for frame, _ in MIXED)
MIXED_MESSAGES = [m for _, m in MIXED if m is not None]


def test_several_frames_in_one_buffer() -> None:
    assert parse_client_frames(MIXED_BYTES, LIMIT) == (MIXED_MESSAGES, b"", False)
    assert wsproto_reads(MIXED_BYTES) == MIXED_MESSAGES


def test_a_frame_cut_at_every_offset_waits_for_the_rest() -> None:
    starts = [0]
    for frame, _ in MIXED:
        starts.append(starts[-1] + len(frame))
    for cut in range(len(MIXED_BYTES) + 1):
        whole = max(i for i, start in enumerate(starts) if start <= cut)   # frames before the cut
        taken, rest, fallback = parse_client_frames(MIXED_BYTES[:cut], LIMIT)
        assert not fallback
        assert taken == [m for _, m in MIXED[:whole] if m is not None]
        assert rest == MIXED_BYTES[starts[whole]:cut]
        assert parse_in_pieces(MIXED_BYTES, [cut]) == (MIXED_MESSAGES, b"", False)


def test_every_read_a_single_byte() -> None:
    cuts = list(range(1, len(MIXED_BYTES)))
    assert parse_in_pieces(MIXED_BYTES, cuts) == (MIXED_MESSAGES, b"", False)


def test_nothing_or_one_byte_is_kept_for_later() -> None:
    assert parse_client_frames(b"", LIMIT) == ([], b"", False)
    assert parse_client_frames(bytes((TEXT_FIN,)), LIMIT) == ([], bytes((TEXT_FIN,)), False)


@pytest.mark.parametrize("key", [b"\0\0\0\0", b"\xff\xff\xff\xff", KEY, b"\x01\x02\x03\x04"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 125, 126, 1001])
def test_payloads_of_any_length_are_unmasked(key: bytes, size: int) -> None:
    message = "".join(chr(0x20 + i % 90) for i in range(size))
    ping = bytes(range(size % MAX_CONTROL_PAYLOAD))
    data = masked(encode_text_frame(message.encode()), key) + masked(bytes((PING_FIN, len(ping))) + ping, key)
    assert parse_client_frames(data, LIMIT) == ([message, ping], b"", False)


def test_limits_are_inclusive() -> None:
    assert parse_client_frames(text("m" * 1000), 1000) == (["m" * 1000], b"", False)
    ping = short(PING_FIN, b"p" * MAX_CONTROL_PAYLOAD)
    assert parse_client_frames(ping, LIMIT) == ([b"p" * MAX_CONTROL_PAYLOAD], b"", False)


# --- the parser: frames it leaves to wsproto ----------------------------------------------

FALLBACK = {
    "close": short(FIN | OP_CLOSE, b"\x03\xe8"),
    "binary": short(BINARY_FIN, b"\x00\x01"),
    "continuation": short(FIN | OP_CONTINUATION, b"more"),
    "text without FIN": short(OP_TEXT, b"part"),
    "ping without FIN": short(OP_PING, b"hi"),
    "reserved opcode": short(FIN | 0x3),
    "RSV1 on text": short(TEXT_FIN | 0x40, b"hi"),
    "RSV2 on text": short(TEXT_FIN | 0x20, b"hi"),
    "RSV3 on text": short(TEXT_FIN | 0x10, b"hi"),
    "RSV1 on ping": short(PING_FIN | 0x40, b"hi"),
    "unmasked text": bytes((TEXT_FIN, 2)) + b"hi",
    "unmasked ping": bytes((PING_FIN, 0)),
    "64-bit length": masked(bytes((TEXT_FIN, LENGTH_64)) + (2).to_bytes(8, "big") + b"hi"),
    "16-bit length of 2": masked(bytes((TEXT_FIN, LENGTH_16, 0, 2)) + b"hi"),
    "16-bit length of 125": masked(bytes((TEXT_FIN, LENGTH_16, 0, 125)) + b"h" * 125),
    "ping with a 16-bit length": masked(bytes((PING_FIN, LENGTH_16, 0, 126)) + b"p" * 126),
    "pong with a 16-bit length": masked(bytes((PONG_FIN, LENGTH_16, 0, 200)) + b"p" * 200),
    "text over max_frame_bytes": text("o" * (LIMIT + 1)),
    "invalid UTF-8": short(TEXT_FIN, b"ok \xff\xfe"),
    "a UTF-8 sequence cut short": short(TEXT_FIN, "é".encode()[:1]),
}


@pytest.mark.parametrize("name", FALLBACK)
def test_the_first_frame_of_another_kind_and_all_after_it_go_to_wsproto(name: str) -> None:
    other = FALLBACK[name]
    after = text("after") + short(PING_FIN, b"p")
    data = text("before") + short(PING_FIN, b"x") + other + after
    assert parse_client_frames(data, LIMIT) == (["before", b"x"], other + after, True)
    for cut in range(len(data) + 1):
        assert parse_in_pieces(data, [cut]) == (["before", b"x"], other + after, True)


@pytest.mark.parametrize("name", [n for n in FALLBACK if n not in ("invalid UTF-8", "a UTF-8 sequence cut short")])
def test_a_frame_of_another_kind_is_known_from_its_header(name: str) -> None:
    other = FALLBACK[name]
    known = 4 if other[1] & LENGTH_BITS == LENGTH_16 else 2
    for cut in range(known):
        assert parse_client_frames(other[:cut], LIMIT) == ([], other[:cut], False)
    for cut in range(known, len(other) + 1):
        assert parse_client_frames(other[:cut], LIMIT) == ([], other[:cut], True)


def test_invalid_utf8_is_known_once_the_frame_is_whole() -> None:
    other = FALLBACK["invalid UTF-8"]
    assert parse_client_frames(other[:-1], LIMIT) == ([], other[:-1], False)
    assert parse_client_frames(other, LIMIT) == ([], other, True)


def test_max_frame_bytes_is_the_callers() -> None:
    frame = text("m" * 1001)
    assert parse_client_frames(frame, 1000) == ([], frame, True)
    assert parse_client_frames(frame, 1001) == (["m" * 1001], b"", False)


# --- property: whatever the cuts, the same messages as wsproto ----------------------------

keys = st.binary(min_size=4, max_size=4)
texts = st.one_of(st.text(), st.text(min_size=40, max_size=2000))
controls = st.binary(max_size=MAX_CONTROL_PAYLOAD)
frames = st.one_of(
    st.builds(lambda m, k: (masked(encode_text_frame(m.encode()), k), m), texts, keys),
    st.builds(lambda p, k: (masked(bytes((PING_FIN, len(p))) + p, k), p), controls, keys),
    st.builds(lambda p, k: (masked(bytes((PONG_FIN, len(p))) + p, k), None), controls, keys),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=20), st.data())
def test_masked_frames_cut_anywhere_parse_back_to_the_same_messages(items: list, data: st.DataObject) -> None:
    stream = b"".join(frame for frame, _ in items)
    expected = [m for _, m in items if m is not None]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    assert parse_in_pieces(stream, cuts) == (expected, b"", False)
    assert wsproto_reads(stream) == expected
