"""Sans-IO WebSocket framing (RFC 6455 section 5): encode server frames, parse small client frames.

A module of its own, with no trio, sockets or wsproto connection in it, because a room encodes
each event once and hands the same bytes to every member: room actors and the bus need the
encoder without the socket layer. And the fast client-frame parser is a function of bytes
only, so it is tested synchronously, frame by frame and cut at every offset, like the codec.

Server frames are never masked and never fragmented: one FIN frame a message. Client frames
are always masked (5.3). The parser takes only the frames chat clients send all the time and
leaves every other one to wsproto, which owns the protocol state and answers its errors.
"""

from __future__ import annotations

import struct

__all__ = [
    "BINARY_FIN", "FIN", "LENGTH_16", "LENGTH_64", "LENGTH_BITS", "MASK_BIT", "MASK_KEY_BYTES",
    "MAX_16BIT_LENGTH", "MAX_CONTROL_PAYLOAD", "MAX_SHORT_LENGTH", "OPCODE_BITS", "OP_BINARY",
    "OP_CLOSE", "OP_CONTINUATION", "OP_PING", "OP_PONG", "OP_TEXT", "PING_FIN", "PONG_FIN",
    "RSV_BITS", "TEXT_FIN", "encode_binary_frame", "encode_text_frame", "parse_client_frames",
]

# First byte: FIN, three reserved bits (no extension is ever negotiated), the opcode.
FIN = 0x80
RSV_BITS = 0x70
OPCODE_BITS = 0x0F
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# First bytes of whole frames without RSV bits: all the server sends, all the parser takes.
TEXT_FIN = FIN | OP_TEXT
BINARY_FIN = FIN | OP_BINARY
PING_FIN = FIN | OP_PING
PONG_FIN = FIN | OP_PONG

# Second byte: the mask bit, then a 7-bit length or a marker for a longer length after it.
MASK_BIT = 0x80
LENGTH_BITS = 0x7F
MAX_SHORT_LENGTH = 125          # payload lengths up to this fit in the second byte
LENGTH_16 = 126                 # marker: a 16-bit length follows
LENGTH_64 = 127                 # marker: a 64-bit length follows
MAX_16BIT_LENGTH = 0xFFFF
MASK_KEY_BYTES = 4              # after the length, in client frames only
MAX_CONTROL_PAYLOAD = 125       # close, ping and pong (5.5)

_MID = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack
# Headers of short frames, made once: most events take the first branch of _encode.
_SHORT_TEXT = [bytes((TEXT_FIN, n)) for n in range(MAX_SHORT_LENGTH + 1)]
_SHORT_BINARY = [bytes((BINARY_FIN, n)) for n in range(MAX_SHORT_LENGTH + 1)]


def _encode(short: list[bytes], first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n <= MAX_SHORT_LENGTH:
        return short[n] + payload
    if n <= MAX_16BIT_LENGTH:
        return _MID(first, LENGTH_16, n) + payload
    return _LONG(first, LENGTH_64, n) + payload


def encode_text_frame(payload: bytes) -> bytes:
    """One complete unmasked FIN text frame. Done once per event; the bytes serve every member."""
    return _encode(_SHORT_TEXT, TEXT_FIN, payload)


def encode_binary_frame(payload: bytes) -> bytes:
    """One complete unmasked FIN binary frame (the chat protocol itself only sends text)."""
    return _encode(_SHORT_BINARY, BINARY_FIN, payload)


def parse_client_frames(data: bytes, max_frame_bytes: int) -> tuple[list[str | bytes], bytes, bool]:
    """Complete, unfragmented, masked text, ping and pong frames at the start of `data`.

    Chat clients send little else, and wsproto's pure-Python parser costs several times more
    per small frame. Returns (messages, rest, fallback), messages in the order of the frames:
    a str for each text frame, the payload (bytes) of each ping, to be answered with a pong;
    pongs leave nothing.

    fallback False: every frame was taken; `rest` is the start of a frame cut by the end of
    `data` (b"" if none), to be put before the next bytes received.
    fallback True: `rest` starts with a frame of another kind -- close, binary, continuation,
    RSV bits, unmasked, a 64-bit or non-minimal 16-bit length, a control frame over 125
    bytes, text over max_frame_bytes or invalid UTF-8 -- and goes to wsproto, and so does
    everything after it on this connection: wsproto sees complete frames in order, the text
    frames it did not see leave no state in it, and whatever it refuses is answered by
    wsproto (1002, 1007), never accepted here. Such a frame is recognised from its header
    alone, so it may be cut short in `rest`.
    """
    messages: list[str | bytes] = []
    pos, end_all = 0, len(data)
    while end_all - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        length = b1 & LENGTH_BITS
        if length == LENGTH_64:
            return messages, data[pos:], True
        head = pos + 2
        if length == LENGTH_16:
            if end_all - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length <= MAX_SHORT_LENGTH:      # not the minimal encoding: wsproto answers it (1002)
                return messages, data[pos:], True
            head = pos + 4
        if not b1 & MASK_BIT or (
                length > max_frame_bytes if b0 == TEXT_FIN
                else (b0 != PING_FIN and b0 != PONG_FIN) or length > MAX_CONTROL_PAYLOAD):
            return messages, data[pos:], True
        end = head + MASK_KEY_BYTES + length
        if end > end_all:
            break
        payload = data[head + MASK_KEY_BYTES:end]
        if length:
            mask = data[head:head + MASK_KEY_BYTES] * (length // MASK_KEY_BYTES + 1)
            payload = (int.from_bytes(payload, "little")
                       ^ int.from_bytes(mask[:length], "little")).to_bytes(length, "little")
        if b0 == TEXT_FIN:
            try:
                messages.append(payload.decode())
            except UnicodeDecodeError:          # wsproto answers it with 1007
                return messages, data[pos:], True
        elif b0 == PING_FIN:
            messages.append(payload)
        pos = end
    return messages, data[pos:], False
