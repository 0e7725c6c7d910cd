"""The listening socket and the HTTP/1.1 upgrade in front of every WebSocket connection,
and `hung_up`, the TCP-level probe for peers that reset.

Why a module of its own: accepting sockets and refusing an upgrade (404 path, 400 malformed
upgrade or Sec-WebSocket-Key, 403 origin, 401 token or ambiguous credentials, 431 request too
large) is plain TCP and HTTP with a JSON body, while everything after the 101 is framing.
The checks run in that order (431 while reading the request). Keeping the two apart keeps
transport.py about the hot path.

The request is read with our own `h11` connection so we control the size limit and keep the
bytes that arrive after the request; wsproto then validates the upgrade from the parsed
request (`initiate_upgrade_connection`) and writes the 101 or the refusal
(`RejectConnection` / `RejectData`). No extension is ever negotiated: `max_frame_bytes`
applies to the payload as received (PROTOCOL section 3).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import select
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.utilities import RemoteProtocolError

from . import errors

log = logging.getLogger(__name__)

#: Validates a bearer token; raises errors.Unauthorized (HTTP 401). The result is the principal.
Authenticate = Callable[[str], Awaitable[object]]

_RECV_CHUNK = 4096
# what Linux reports once the peer sent RST (Windows has no poll(2): there only recv tells)
_HANGUP = getattr(select, "POLLERR", 0) | getattr(select, "POLLHUP", 0)
_REASONS = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
            405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "bad_request", 413: "too_large", 429: "rate_limited", 431: "too_large",
          500: "internal", 503: "unavailable"}


@attrs.frozen
class Handshake:
    """What the upgrade request said, for the handler (header names are lower case)."""

    path: str
    query: Mapping[str, str] = attrs.field(repr=False)
    raw_headers: tuple[tuple[bytes, bytes], ...] = attrs.field(repr=False)   # never log tokens
    token: str | None = attrs.field(repr=False)
    remote: str = attrs.field()
    principal: object | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """(name, value) as text, decoded on demand: most connections never look."""
        return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers)


class Refused(Exception):
    """The upgrade is answered with an HTTP error instead of 101."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_body(status: int, message: str) -> bytes:
    """The JSON error body of PROTOCOL section 8 for an HTTP status."""
    return json.dumps({"error": _CODES.get(status, "bad_request"), "message": message}).encode()


def _response_headers(status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...]) -> list:
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"), *extra]


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of `data` to a non-blocking socket (handshake only; cancellable)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]
    await trio.lowlevel.checkpoint()


async def recv_some(sock: socket.socket, size: int) -> bytes:
    """Read what is available (at least one byte, or b"" at EOF) from a non-blocking socket."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def linger_close(sock: socket.socket, timeout_s: float) -> None:
    """Half-close after a response and drain the peer until EOF (bounded by timeout_s).

    Closing a socket that still has unread input sends RST, which can destroy the response
    we just wrote before the client reads it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(timeout_s):
            while await recv_some(sock, 65536):
                pass
    except OSError:
        pass


async def open_listener(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on host:port (IPv4 first if the name has both)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


async def accept_forever(listener: socket.socket, spawn: Callable[[socket.socket, str], None]) -> None:
    """Hand every accepted socket (non-blocking, TCP_NODELAY) to spawn(sock, "host:port")."""
    while True:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:          # EMFILE and friends: back off instead of spinning
            log.warning("accept failed: %s", exc)
            await trio.sleep(0.1)
            continue
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        spawn(sock, f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address))
        await trio.lowlevel.checkpoint()


def hung_up(sockets: Sequence[socket.socket]) -> list[int]:
    """Indexes of the sockets whose peer reset TCP (or that are closed both ways).

    One poll(2) for all of them, reading nothing. After an RST Linux reports POLLERR (the
    pending ECONNRESET) and POLLHUP, while the data that came before the reset stays
    readable and recv() reports the reset only after it, so a busy reader learns of it late.
    A peer that only half-closed (POLLRDHUP alone) is not listed: its input is still to read.
    """
    if not _HANGUP:
        return []
    poller = select.poll()
    index: dict[int, int] = {}
    for i, sock in enumerate(sockets):
        fd = sock.fileno()
        if fd >= 0:
            poller.register(fd, _HANGUP)
            index[fd] = i
    return [index[fd] for fd, events in poller.poll(0) if events & _HANGUP]


def _parse_query(pairs: list[tuple[str, str]]) -> Mapping[str, str]:
    """The handler's view of the query: the first value of each name (`token` is checked
    for duplicates separately, in _token_from)."""
    values: dict[str, str] = {}
    for key, value in pairs:
        values.setdefault(key, value)
    return MappingProxyType(values)


def _token_from(headers: list[tuple[bytes, bytes]], pairs: list[tuple[str, str]]) -> str | None:
    """`Authorization: Bearer <t>` wins over `?token=`; anything ambiguous is refused.

    Two Authorization headers or two `token` parameters are refused rather than resolved:
    a proxy or log that reads the other one would see a different user than we
    authenticate (PROTOCOL section 2). Any Authorization value other than a non-empty
    Bearer token is refused outright, even next to a valid `?token=`.
    """
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) > 1:
        raise Refused(401, "more than one Authorization header")
    tokens = [value for key, value in pairs if key == "token"]
    if len(tokens) > 1:
        raise Refused(401, "more than one token parameter")
    if values:
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "Authorization must be 'Bearer <token>'")
        return token
    if not tokens:
        return None
    if not tokens[0]:
        raise Refused(401, "empty token")
    return tokens[0]


def _check_key(headers: list[tuple[bytes, bytes]]) -> None:
    """Exactly one Sec-WebSocket-Key, the canonical base64 form of 16 bytes (RFC 6455 4.2.1).

    wsproto only checks that the header exists, and with two of them answers for one of
    them: both are a malformed upgrade, 400.
    """
    keys = [value for name, value in headers if name == b"sec-websocket-key"]
    if len(keys) != 1:
        raise Refused(400, "exactly one Sec-WebSocket-Key is required")
    try:
        raw = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16 or base64.b64encode(raw) != keys[0]:
        raise Refused(400, "Sec-WebSocket-Key must be the base64 form of 16 bytes")


async def _read_request(sock: socket.socket, http: h11.Connection, max_request_bytes: int) -> h11.Request:
    received = 0
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise Refused(exc.error_status_hint, str(exc)) from None
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            if received > max_request_bytes:
                raise Refused(431, "upgrade request too large")
            data = await recv_some(sock, _RECV_CHUNK)
            if not data:
                raise EOFError("peer closed during the handshake")
            received += len(data)
            http.receive_data(data)
        else:  # ConnectionClosed and friends: nothing to answer
            raise EOFError(f"unexpected HTTP event {event!r}")


async def perform_handshake(
    sock: socket.socket,
    remote: str,
    *,
    path: str,
    allowed_origins: tuple[str, ...],
    max_request_bytes: int,
    linger_s: float,
    authenticate: Authenticate | None,
) -> tuple[Connection, Handshake, bytes] | None:
    """Answer the upgrade on `sock`: 101 and (wsproto connection, Handshake, trailing bytes), or None.

    On None the refusal (if any) has been written and the socket half-closed; the caller
    closes it. The caller bounds the whole call with the handshake timeout; cancellation
    leaves the socket to the caller as well.
    """
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_bytes)
    try:
        request = await _read_request(sock, http, max_request_bytes)
    except Refused as refused:
        await _refuse_plain(sock, http, refused, linger_s)
        return None
    except EOFError:
        return None
    if request.method != b"GET" or request.http_version != b"1.1":
        await _refuse_plain(sock, http, Refused(405 if request.method != b"GET" else 400,
                                                "a WebSocket upgrade is GET over HTTP/1.1",
                                                ((b"allow", b"GET"),)), linger_s)
        return None
    headers = list(request.headers)
    ws = WSConnection(ConnectionType.SERVER)
    invalid: RemoteProtocolError | None = None
    try:
        ws.initiate_upgrade_connection(headers, request.target)
    except RemoteProtocolError as exc:
        invalid = exc                   # answered below, after the path check (404 first)
    except (h11.ProtocolError, ValueError):     # e.g. a Host that is not IDNA, a non-ASCII target
        await _refuse_plain(sock, http, Refused(400, "malformed upgrade request"), linger_s)
        return None
    target = request.target.decode("latin-1")
    parts = urlsplit(target)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = _parse_query(pairs)
    try:
        if parts.path != path:
            raise Refused(404, f"no WebSocket endpoint at {parts.path}")
        if invalid is not None:
            hint = invalid.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            extra = tuple(hint.headers) if isinstance(hint, RejectConnection) else ()
            raise Refused(status, str(invalid), extra)
        _check_key(headers)
        origin = next((v.decode("latin-1") for n, v in headers if n == b"origin"), None)
        if origin is not None and allowed_origins and origin not in allowed_origins:
            raise Refused(403, "origin not allowed")
        token = _token_from(headers, pairs)
        principal = await _authenticate(authenticate, token)
    except Refused as refused:
        await _refuse_ws(sock, ws, refused, linger_s)
        return None
    await send_all(sock, ws.send(AcceptConnection()))
    trailing, _closed = http.trailing_data
    handshake = Handshake(path=parts.path, query=query, raw_headers=tuple(headers), token=token,
                          remote=remote, principal=principal)
    assert ws.connection is not None
    return ws.connection, handshake, trailing       # the upgrade's h11 state is not kept


async def _authenticate(authenticate: Authenticate | None, token: str | None) -> object | None:
    if token is None or authenticate is None:
        return None
    try:
        return await authenticate(token)
    except errors.ChatError as exc:
        raise Refused(errors.HTTP_STATUS.get(exc.code, 500), exc.message) from None
    except Exception:
        log.exception("authenticate failed unexpectedly")
        raise Refused(500, "internal error") from None


async def _refuse_ws(sock: socket.socket, ws: WSConnection, refused: Refused, linger_s: float) -> None:
    log.debug("upgrade refused: %s %s", refused.status, refused.message)
    body = error_body(refused.status, refused.message)
    headers = _response_headers(refused.status, body, refused.headers)
    data = ws.send(RejectConnection(status_code=refused.status, headers=headers, has_body=True))
    data += ws.send(RejectData(data=body, body_finished=True))
    await _write_and_linger(sock, data, linger_s)


async def _refuse_plain(sock: socket.socket, http: h11.Connection, refused: Refused,
                        linger_s: float) -> None:
    """Refusal before wsproto has seen a request (unparsable, too large, not a GET)."""
    log.debug("upgrade refused: %s %s", refused.status, refused.message)
    body = error_body(refused.status, refused.message)
    try:
        data = http.send(h11.Response(status_code=refused.status, reason=_REASONS.get(refused.status, b""),
                                      headers=_response_headers(refused.status, body, refused.headers)))
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return
    await _write_and_linger(sock, data, linger_s)


async def _write_and_linger(sock: socket.socket, data: bytes, linger_s: float) -> None:
    try:
        await send_all(sock, data)
    except OSError:
        return
    await linger_close(sock, linger_s)
