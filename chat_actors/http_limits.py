"""What every HTTP request must satisfy before it is routed (PROTOCOL section 8), as ASGI middleware.

Three rules live here, outside Starlette, because they concern the exchange rather than a route:

* **HTTP/1.x only.** `hypercorn_h11` keeps hypercorn from switching to HTTP/2; a request that
  still names another version (the `PRI * HTTP/2.0` preface reaches us as one) is answered 400,
  and the binary frames after it get hypercorn's own 400 and a close.
* **A declared body over the limit** (`Content-Length` > `max_frame_bytes`) is answered 413 at
  once, before the route, its authentication or a single body byte is read. Bodies without a
  length (chunked) are counted by Starlette's own `max_body_size` as they stream, which raises
  413 when the limit is passed (`http_api.build_app`); nothing here buffers a body.
* **An answer given before the body was read closes the connection, and never hangs it.**
  hypercorn (0.18, trio worker) hands body chunks to the app through a channel of
  `max_app_queue_size` (10) entries and stops reading the socket while it is full. An app that
  answers without reading the rest (a 413, a 401 before the body is looked at) leaves a full
  channel, and hypercorn's end-of-response path then blocks putting `http.disconnect` into it:
  the connection, its buffered chunks and its task stay forever, whatever the timeouts say.
  So once the final part of a response is sent while the request body is unfinished, a task
  here discards what is already in that channel until the `http.disconnect` hypercorn sends as
  it closes the connection (bounded by `drain_timeout_s`). Such responses carry
  `Connection: close`: the rest of the body is never read.

Stalls (headers or body trickling in, or not at all) are hypercorn's `read_timeout` and
`keep_alive_timeout`, set from CHAT_HANDSHAKE_TIMEOUT in `server._hypercorn_config`.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

import orjson
import trio

from .errors import HTTP_STATUS, ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: HTTP versions this listener speaks (h11 parses both; HTTP/1.0 clients still exist)
HTTP_VERSIONS = frozenset({"1.0", "1.1"})
#: a Content-Length with more digits than this is over any limit (and never parsed as an int)
_MAX_LENGTH_DIGITS = 18


class RequestGuard:
    """ASGI middleware enforcing the rules in the module docstring for `http` scopes.

    `on_refused(code)` is called for each request this middleware answers itself (metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        drain_timeout_s: float,
        on_refused: Callable[[ErrorCode], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.drain_timeout_s = drain_timeout_s
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with trio.open_nursery() as nursery:
            exchange = _Exchange(receive, send, nursery, has_body=has_body(scope))
            refusal = self._refusal(scope)
            if refusal is not None:
                if self._on_refused is not None:
                    self._on_refused(refusal[0])
                await exchange.answer_error(*refusal)
            else:
                await self.app(scope, exchange.receive, exchange.send)
            # Only the drain task (if any) is left: it ends at hypercorn's http.disconnect.
            nursery.cancel_scope.deadline = trio.current_time() + self.drain_timeout_s

    def _refusal(self, scope: Scope) -> tuple[ErrorCode, str] | None:
        if scope.get("http_version") not in HTTP_VERSIONS:
            return ErrorCode.BAD_REQUEST, "this listener speaks HTTP/1.1 only"
        declared = declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return ErrorCode.TOO_LARGE, f"request body over {self.max_body_bytes} bytes"
        return None


def has_body(scope: Scope) -> bool:
    """Whether the request has body bytes to come (a Content-Length above 0, or chunked)."""
    declared = declared_length(scope)
    if declared is not None:
        return declared > 0
    return any(name.lower() == b"transfer-encoding" for name, _ in scope.get("headers", ()))


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (h11 has checked it is digits, and one value), or None.

    A value too long to be a real length counts as larger than any limit.
    """
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.strip()
            if len(text) > _MAX_LENGTH_DIGITS:
                return 10**_MAX_LENGTH_DIGITS
            return int(text) if text.isdigit() else None
    return None


class _Exchange:
    """One request/response pair: knows whether the request body has ended, drains if needed."""

    __slots__ = ("_receive", "_send", "_nursery", "_body_done", "_draining")

    def __init__(self, receive: Receive, send: Send, nursery: trio.Nursery, *, has_body: bool) -> None:
        self._receive = receive
        self._send = send
        self._nursery = nursery
        self._body_done = not has_body
        self._draining = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_done = True  # the last chunk, or http.disconnect
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if not self._body_done and kind == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"connection" for name, _ in headers):
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        elif (
            not self._body_done
            and not self._draining
            and kind == "http.response.body"
            and not message.get("more_body", False)
        ):
            # Before the final part goes out: sending it makes hypercorn put http.disconnect
            # into the app channel, which must not be full (see the module docstring).
            self._draining = True
            self._nursery.start_soon(self._drain)
        await self._send(message)

    async def _drain(self) -> None:
        """Discard body chunks hypercorn already read, until it says the connection is gone."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def answer_error(self, code: ErrorCode, message: str) -> None:
        """A refusal in the API's JSON error form (closing the connection if a body is unread).

        A body-less refusal (the `PRI` preface) does not ask for a close: hypercorn would then
        close the socket as soon as it parsed the bytes the client pipelined after the request
        line, racing this response (trio's BusyResourceError in our send). Kept alive, those
        bytes get hypercorn's own 400 and a close once this response is out.
        """
        body = orjson.dumps({"error": code.value, "message": message})
        await self.send({
            "type": "http.response.start",
            "status": HTTP_STATUS[code],
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        })
        await self.send({"type": "http.response.body", "body": body})
