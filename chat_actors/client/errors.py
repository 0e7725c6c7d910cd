"""What the client library raises: one exception class per protocol error code, plus two of its own.

A program reacts to *what happened*, not to how it travelled: `Forbidden` is the same class
whether it came from an `error` event on the WebSocket or from a 403 on the HTTP API, and
`Unauthorized` is also what a 401 upgrade refusal or a 4001 close turns into (the token is
bad or expired: log in again). The codes themselves are `chat_actors.errors.ErrorCode`, the
server's own vocabulary, so the two sides cannot drift apart.

The server-side error tree (`chat_actors.errors`) is not reused on purpose: those classes
mean "refuse this with code X", these mean "the server answered code X", and a client
program should not import the server's internals to catch them.
"""

from __future__ import annotations

from typing import ClassVar

from chat_actors.errors import ErrorCode

__all__ = [
    "ChatError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "NotJoined",
    "Conflict",
    "TooLarge",
    "RateLimited",
    "Unavailable",
    "Internal",
    "ConnectionFailed",
    "ChatClosed",
    "error_for",
]

Ref = str | int | None


class ChatError(Exception):
    """Base of every error the client library raises on purpose.

    `code` is the protocol error code (`ErrorCode`, a str) or None for the library's own
    errors; `message` is the server's human-readable text; `ref` the request's correlation
    value when the error answered a WebSocket command; `status` the HTTP status when it
    came from the HTTP API.
    """

    code: ClassVar[ErrorCode | None] = None

    def __init__(self, message: str = "", *, ref: Ref = None, status: int | None = None) -> None:
        super().__init__(message or (self.code.value if self.code else type(self).__name__))
        self.message = message
        self.ref = ref
        self.status = status


class BadRequest(ChatError):
    """`bad_request`: the command or body was malformed (a library bug or bad input)."""

    code = ErrorCode.BAD_REQUEST


class Unauthorized(ChatError):
    """`unauthorized`, an upgrade refused with 401, or close code 4001: log in again."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(ChatError):
    """`forbidden`: a private room the user is not a member of, or not its owner."""

    code = ErrorCode.FORBIDDEN


class NotFound(ChatError):
    """`not_found`: an unknown user or room."""

    code = ErrorCode.NOT_FOUND


class NotJoined(ChatError):
    """`not_joined`: `send`, `typing` or `read` on a room this connection has not joined."""

    code = ErrorCode.NOT_JOINED


class Conflict(ChatError):
    """`conflict`: the username or room name is taken."""

    code = ErrorCode.CONFLICT


class TooLarge(ChatError):
    """`too_large`: text, meta or frame over the server's limits, or the room cap reached."""

    code = ErrorCode.TOO_LARGE


class RateLimited(ChatError):
    """`rate_limited`: over the token bucket; nothing was stored.

    `retry_after` (seconds) is the server's `Retry-After` hint when it gave one.
    """

    code = ErrorCode.RATE_LIMITED

    def __init__(
        self, message: str = "", *, ref: Ref = None, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, ref=ref, status=status)
        self.retry_after = retry_after


class Unavailable(ChatError):
    """`unavailable`: the store or bus is down; nothing was stored, retrying is safe."""

    code = ErrorCode.UNAVAILABLE


class Internal(ChatError):
    """`internal`: an unexpected failure on the server."""

    code = ErrorCode.INTERNAL


class ConnectionFailed(Unavailable):
    """The server could not be reached (or not within the chat's `give_up_after`).

    A subclass of `Unavailable`, so one `except Unavailable` covers "try again later".
    """


class ChatClosed(ChatError):
    """The chat was used after it was closed."""


_BY_CODE: dict[str, type[ChatError]] = {
    cls.code.value: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, NotJoined, Conflict, TooLarge, RateLimited,
        Unavailable, Internal,
    )
    if cls.code is not None
}

#: HTTP status -> class, for error bodies that do not carry a known code.
_BY_STATUS: dict[int, type[ChatError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: TooLarge,
    429: RateLimited, 503: Unavailable,
}


def error_for(code: str | None, message: str = "", *, ref: Ref = None, status: int | None = None) -> ChatError:
    """The exception for a protocol error `code` (falling back to the HTTP `status`).

    An unknown code (a newer server) becomes `Internal` for a 5xx or missing status and a
    plain `ChatError` otherwise, with the code kept in the message.
    """
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status or 0)
    if cls is None:
        cls = Internal if status is None or status >= 500 else ChatError
        message = f"{code}: {message}" if code else message
    return cls(message, ref=ref, status=status)
