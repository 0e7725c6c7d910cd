"""A small test client for the wire contract (PROTOCOL.md): HTTP accounts, WebSocket connections.

Two WebSocket clients live here on purpose:

* `connect()` wraps trio-websocket, a well-behaved client (answers pings, valid UTF-8, one
  frame per message). Most tests use it through `Conn`, which keeps unconsumed events in a
  buffer so a test can wait for one event type without losing the others.
* `raw_connect()` is a hand-driven wsproto client over a plain trio socket, for what a
  well-behaved client cannot do: never answer pings, send invalid UTF-8 or hand-built
  fragments, shrink its receive buffer and stop reading, or just look at the upgrade status.

Waiting is always bounded by generous `trio.fail_after` timeouts; nothing here measures speed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket as stdsocket
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterable, Mapping
from urllib.parse import quote, urlsplit

import httpx
import jwt
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

PASSWORD = "correct-horse-battery"
TIMEOUT = 10.0

#: Events a client must never lose (PROTOCOL section 5 "Backpressure"); the rest are ephemeral.
DURABLE = frozenset(
    {"welcome", "synced", "joined", "left", "ack", "message", "history", "presence_list", "pong", "error"}
)
EPHEMERAL = frozenset({"typing", "read", "presence"})


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- HTTP


def http(http_url: str) -> httpx.AsyncClient:
    """An HTTP client bound to the server's API (use as `async with http(url) as h`).

    A cluster's `http_url` names every node (`deployments.SpreadUrl`): the client then sends
    each request to the next node, as a load balancer without sticky sessions would.
    """
    spread = getattr(http_url, "spread", None)
    if spread:
        from .deployments import SpreadTransport

        return httpx.AsyncClient(base_url=str(http_url), timeout=TIMEOUT, transport=SpreadTransport(spread))
    return httpx.AsyncClient(base_url=http_url, timeout=TIMEOUT)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register_response(http_url: str, username: str, password: str = PASSWORD) -> httpx.Response:
    async with http(http_url) as h:
        return await h.post("/api/register", json={"username": username, "password": password})


async def register(http_url: str, username: str, password: str = PASSWORD) -> str:
    """Create an account and return its token (fails the test unless the answer is 201)."""
    r = await register_response(http_url, username, password)
    assert r.status_code == 201, (r.status_code, r.text)
    return r.json()["token"]


async def login(http_url: str, username: str, password: str = PASSWORD) -> httpx.Response:
    async with http(http_url) as h:
        return await h.post("/api/login", json={"username": username, "password": password})


# --------------------------------------------------------------------------- tokens


def make_token(
    secret: str,
    sub: str,
    *,
    ttl_s: float | None = 3600,
    alg: str = "HS256",
    **claims: Any,
) -> str:
    """A JWT signed with `secret`; `ttl_s=None` leaves out `exp`, a negative one is expired."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now}
    if ttl_s is not None:
        payload["exp"] = now + ttl_s
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=alg)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(sub: str, ttl_s: float = 3600) -> str:
    """An `alg: none` JWT (no signature), which the server must refuse."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": sub, "iat": now, "exp": now + ttl_s}).encode())
    return f"{header}.{body}."


class Deployment:
    """What every deployment handle offers the tests: accounts, connections and tokens on
    whatever `http_url` / `ws_url` / `secret` the handle has (one node, or a cluster's next node)."""

    http_url: str
    ws_url: str
    secret: str

    async def user(self, name: str, password: str = PASSWORD) -> str:
        """Register `name` and return its token."""
        return await register(self.http_url, name, password)

    def connect(self, token: str | None, **kwargs: Any):  # -> AsyncContextManager[Conn]
        return connect(self.ws_url, token, **kwargs)

    def token(self, sub: str, **kwargs: Any) -> str:
        return make_token(self.secret, sub, **kwargs)


# --------------------------------------------------------------------------- reading events


def dumps(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)


def matches(event: Mapping[str, Any], type_: str | None, fields: Mapping[str, Any]) -> bool:
    if type_ is not None and event.get("type") != type_:
        return False
    return all(k in event and event[k] == v for k, v in fields.items())


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    # `from` is a Python keyword: tests pass `from_=`.
    if "from_" in fields:
        fields["from"] = fields.pop("from_")
    return fields


async def recv_json(ws: WebSocketConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next frame as JSON; ConnectionClosed propagates, a silent server fails the test."""
    with trio.fail_after(timeout):
        data = await ws.get_message()
    assert isinstance(data, str), f"expected a text frame, got binary {data!r}"
    event = json.loads(data)
    assert isinstance(event, dict) and isinstance(event.get("type"), str), event
    return event


async def expect(
    ws: WebSocketConnection, type_: str, *, timeout: float = TIMEOUT, strict: bool = False, **fields: Any
) -> dict[str, Any]:
    """Read until an event of `type_` with `fields` arrives; with `strict`, any other durable
    event on the way fails the test (ephemeral ones are skipped)."""
    fields = _fields(fields)
    with trio.fail_after(timeout):
        while True:
            event = await recv_json(ws, timeout)
            if matches(event, type_, fields):
                return event
            assert not (strict and event["type"] in DURABLE), f"unexpected {event} while waiting for {type_}"


async def assert_silent(ws: WebSocketConnection, seconds: float = 0.3) -> None:
    """Nothing at all arrives within `seconds` (absence checks only; never a speed check)."""
    with trio.move_on_after(seconds):
        data = await ws.get_message()
        raise AssertionError(f"expected silence, got {data!r}")


# --------------------------------------------------------------------------- trio-websocket client


class Conn:
    """One WebSocket connection with an event buffer.

    `recv()` returns events in arrival order (buffered first); `expect()` returns the first
    matching event, buffered or new, and leaves the others buffered for later calls.
    """

    _refs = itertools.count(1)

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.buffer: deque[dict[str, Any]] = deque()
        self.welcome: dict[str, Any] | None = None
        self.offline: list[dict[str, Any]] = []  # events between welcome and synced
        self.close_code: int | None = None

    @property
    def user(self) -> str:
        assert self.welcome is not None
        return self.welcome["user"]

    # -- sending
    async def send(self, obj: Any) -> None:
        await self.ws.send_message(obj if isinstance(obj, (str, bytes)) else json.dumps(obj, ensure_ascii=False))

    def new_ref(self) -> str:
        return f"r{next(self._refs)}"

    # -- receiving
    async def _read(self, timeout: float) -> dict[str, Any]:
        try:
            return await recv_json(self.ws, timeout)
        except ConnectionClosed as exc:
            self.close_code = exc.reason.code
            raise

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self.buffer:
            return self.buffer.popleft()
        return await self._read(timeout)

    async def expect(
        self, type_: str, *, timeout: float = TIMEOUT, strict: bool = False, **fields: Any
    ) -> dict[str, Any]:
        fields = _fields(fields)
        for i, event in enumerate(self.buffer):
            if matches(event, type_, fields):
                del self.buffer[i]
                return event
            assert not (strict and event["type"] in DURABLE), f"unexpected {event} while waiting for {type_}"
        with trio.fail_after(timeout):
            while True:
                event = await self._read(timeout)
                if matches(event, type_, fields):
                    return event
                assert not (strict and event["type"] in DURABLE), (
                    f"unexpected {event} while waiting for {type_} {fields}"
                )
                self.buffer.append(event)

    async def assert_silent(self, seconds: float = 0.3, *, ignore: Iterable[str] = ()) -> None:
        """No event (other than types in `ignore`) is buffered or arrives within `seconds`."""
        ignored = set(ignore)
        leftover = [e for e in self.buffer if e["type"] not in ignored]
        assert not leftover, f"expected silence, have {leftover}"
        self.buffer.clear()
        with trio.move_on_after(seconds):
            while True:
                event = await self._read(seconds + TIMEOUT)
                assert event["type"] in ignored, f"expected silence, got {event}"

    async def request(self, cmd: dict[str, Any], reply: str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Send `cmd` with a fresh ref; return the event of type `reply` or `error` carrying it."""
        ref = cmd.setdefault("ref", self.new_ref())
        await self.send(cmd)
        with trio.fail_after(timeout):
            while True:
                for i, event in enumerate(self.buffer):
                    if event.get("ref") == ref and event["type"] in (reply, "error"):
                        del self.buffer[i]
                        return event
                self.buffer.append(await self._read(timeout))

    async def messages(self, room: str, count: int, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next `count` `message` events of `room`, in arrival order."""
        out: list[dict[str, Any]] = []
        with trio.fail_after(timeout):
            while len(out) < count:
                out.append(await self.expect("message", room=room, timeout=timeout))
        return out

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        """Read (buffering events) until the server closes; return the close code."""
        with trio.fail_after(timeout):
            while True:
                try:
                    self.buffer.append(await self._read(timeout))
                except ConnectionClosed:
                    return self.close_code

    # -- commands with a direct reply
    async def join(self, room: str, since: int | None = None, **extra: Any) -> dict[str, Any]:
        cmd: dict[str, Any] = {"type": "join", "room": room, **extra}
        if since is not None:
            cmd["since"] = since
        event = await self.request(cmd, "joined")
        assert event["type"] == "joined", event
        return event

    async def leave(self, room: str) -> dict[str, Any]:
        event = await self.request({"type": "leave", "room": room}, "left")
        assert event["type"] == "left", event
        return event

    async def send_message(self, room: str, text: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
        """`send` and wait for its `ack` (or error); returns that reply."""
        cmd = {"type": "send", "room": room, "id": id or os.urandom(6).hex(), "text": text, **extra}
        return await self.request(cmd, "ack")

    async def dm(self, to: str, text: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
        cmd = {"type": "dm", "to": to, "id": id or os.urandom(6).hex(), "text": text, **extra}
        return await self.request(cmd, "ack")

    async def history(self, room: str, **params: Any) -> dict[str, Any]:
        return await self.request({"type": "history", "room": room, **params}, "history")

    async def presence(self, room: str) -> dict[str, Any]:
        return await self.request({"type": "presence", "room": room}, "presence_list")

    async def ping(self) -> dict[str, Any]:
        event = await self.request({"type": "ping"}, "pong")
        assert event["type"] == "pong", event
        return event

    async def read_welcome(self, *, synced: bool = True, timeout: float = TIMEOUT) -> dict[str, Any]:
        first = await self.recv(timeout)
        assert first["type"] == "welcome", f"first frame must be welcome, got {first}"
        self.welcome = first
        if synced:
            while True:
                event = await self.recv(timeout)
                if event["type"] == "synced":
                    break
                self.offline.append(event)
        return first

    async def aclose(self) -> None:
        await self.ws.aclose()


@asynccontextmanager
async def connect(
    ws_url: str,
    token: str | None = None,
    *,
    auth: str = "header",
    headers: Iterable[tuple[str, str]] = (),
    query: str = "",
    welcome: bool = True,
    synced: bool = True,
    queue_size: int = 4096,
    max_message_size: int = 1 << 24,
    receive_buffer_size: int = 65536,
) -> AsyncIterator[Conn]:
    """Open a connection; `auth` is "header" (Bearer), "query" (?token=), "frame" (first-frame
    `auth`) or "none". By default waits for `welcome` and everything up to `synced`."""
    hdrs = list(headers)
    url = ws_url
    params = [query] if query else []
    if token is not None and auth == "header":
        hdrs.append(("Authorization", f"Bearer {token}"))
    elif token is not None and auth == "query":
        params.append("token=" + quote(token, safe=""))
    if params:
        url += "?" + "&".join(params)
    async with open_websocket_url(
        url,
        extra_headers=[(k.encode(), v.encode()) for k, v in hdrs],
        message_queue_size=queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
        connect_timeout=TIMEOUT,
        disconnect_timeout=5,
    ) as ws:
        conn = Conn(ws)
        if token is not None and auth == "frame":
            await conn.send({"type": "auth", "token": token})
        if welcome and token is not None:
            await conn.read_welcome(synced=synced)
        yield conn


# --------------------------------------------------------------------------- raw wsproto client


class HandshakeRejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upgrade refused with HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def build_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame, built by hand (so it may carry what wsproto would refuse)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    mask = os.urandom(4)
    head += mask
    return bytes(head) + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2


class RawClient:
    """A wsproto client driven by hand: the test decides when (and whether) to read."""

    def __init__(self, stream: trio.SocketStream, auto_pong: bool) -> None:
        self.stream = stream
        self.wsc = WSConnection(ConnectionType.CLIENT)
        self.auto_pong = auto_pong
        self.messages: deque[str | bytes] = deque()
        self.pings = 0
        self.close_code: int | None = None
        self._text: list[str] = []
        self._bytes: list[bytes] = []

    async def _handshake(self, host: str, target: str, headers: list[tuple[str, str]]) -> None:
        await self.stream.send_all(
            self.wsc.send(Request(host=host, target=target, extra_headers=[(k.encode(), v.encode()) for k, v in headers]))
        )
        status, body = 0, b""
        with trio.fail_after(TIMEOUT):
            while True:
                data = await self.stream.receive_some(65536)
                self.wsc.receive_data(data or None)
                for ev in self.wsc.events():
                    if isinstance(ev, AcceptConnection):
                        return
                    if isinstance(ev, RejectConnection):
                        status = ev.status_code
                        if not ev.has_body:
                            raise HandshakeRejected(status, body)
                    elif isinstance(ev, RejectData):
                        body += ev.data
                        if ev.body_finished:
                            raise HandshakeRejected(status, body)
                if not data:
                    raise HandshakeRejected(status, body)

    async def _pump(self) -> None:
        """Read once from the socket and turn what arrived into messages / close / pings."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            if self.close_code is None:
                self.close_code = 1006
            return
        self.wsc.receive_data(data)
        for ev in self.wsc.events():
            if isinstance(ev, TextMessage):
                self._text.append(ev.data)
                if ev.message_finished:
                    self.messages.append("".join(self._text))
                    self._text.clear()
            elif isinstance(ev, BytesMessage):
                self._bytes.append(bytes(ev.data))
                if ev.message_finished:
                    self.messages.append(b"".join(self._bytes))
                    self._bytes.clear()
            elif isinstance(ev, Ping):
                self.pings += 1
                if self.auto_pong:
                    await self._send_bytes(self.wsc.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                self.close_code = ev.code
                try:
                    await self._send_bytes(self.wsc.send(ev.response()))
                except Exception:  # the server may already have dropped the socket
                    pass

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def recv(self, timeout: float = TIMEOUT) -> str | bytes:
        """The next complete message; raises `RawClosed` once the server has closed."""
        with trio.fail_after(timeout):
            while not self.messages:
                if self.close_code is not None:
                    raise RawClosed(self.close_code)
                await self._pump()
        return self.messages.popleft()

    async def recv_json(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        data = await self.recv(timeout)
        assert isinstance(data, str), data
        return json.loads(data)

    async def expect(self, type_: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        fields = _fields(fields)
        with trio.fail_after(timeout):
            while True:
                event = await self.recv_json(timeout)
                if matches(event, type_, fields):
                    return event

    async def wait_close(self, timeout: float = TIMEOUT) -> tuple[int, list[str | bytes]]:
        """Read until closed; returns (close code, messages received meanwhile); 1006 = TCP drop."""
        got: list[str | bytes] = []
        with trio.fail_after(timeout):
            while self.close_code is None:
                await self._pump()
                got.extend(self.messages)
                self.messages.clear()
        got.extend(self.messages)
        self.messages.clear()
        return self.close_code, got

    async def wait_pings(self, count: int, timeout: float = TIMEOUT) -> None:
        with trio.fail_after(timeout):
            while self.pings < count and self.close_code is None:
                await self._pump()

    async def send_json(self, obj: Any) -> None:
        await self.send_text(dumps(obj))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.wsc.send(TextMessage(data=text)))

    async def send_binary(self, data: bytes) -> None:
        await self.stream.send_all(self.wsc.send(BytesMessage(data=data)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


class RawClosed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed with {code}")
        self.code = code


@asynccontextmanager
async def raw_connect(
    ws_url: str,
    token: str | None = None,
    *,
    auth: str = "header",
    headers: Iterable[tuple[str, str]] = (),
    query: str = "",
    auto_pong: bool = True,
    rcvbuf: int | None = None,
) -> AsyncIterator[RawClient]:
    """Open the TCP connection and do the upgrade; raises HandshakeRejected on a refusal."""
    parts = urlsplit(ws_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path or "/"
    params = [query] if query else []
    hdrs = list(headers)
    if token is not None and auth == "header":
        hdrs.append(("Authorization", f"Bearer {token}"))
    elif token is not None and auth == "query":
        params.append("token=" + quote(token, safe=""))
    if params:
        target += "?" + "&".join(params)
    sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, rcvbuf)
    with trio.fail_after(TIMEOUT):
        await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    client = RawClient(stream, auto_pong)
    try:
        await client._handshake(f"{host}:{port}", target, hdrs)
        yield client
    finally:
        await stream.aclose()


async def upgrade_status(ws_url: str, token: str | None = None, **kwargs: Any) -> int:
    """101 if the upgrade is accepted, else the HTTP status of the refusal."""
    try:
        async with raw_connect(ws_url, token, **kwargs):
            return 101
    except HandshakeRejected as exc:
        return exc.status
