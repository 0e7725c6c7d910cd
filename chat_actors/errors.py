"""Error tree and close codes shared by the codec, the actors, the store and the HTTP API.

Errors name who is at fault and carry the protocol code to answer with, so the connection
boundary can turn any of them into an `error` event or an HTTP JSON body without guessing.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """The `code` values of PROTOCOL section 7."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    NOT_JOINED = "not_joined"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


#: HTTP status for each error code (PROTOCOL section 8).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_JOINED: 400,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class CloseCode(enum.IntEnum):
    """WebSocket close codes of PROTOCOL section 7."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    IDLE = 4000
    UNAUTHORIZED = 4001
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


class ChatError(Exception):
    """A request the server refuses with a protocol error code.

    `ref` is the client's correlation value when known, echoed in the `error` event.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, ref: str | int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.ref = ref


class ProtocolError(ChatError):
    """The client sent something the contract does not allow (the client is at fault)."""

    code = ErrorCode.BAD_REQUEST


class TooLarge(ProtocolError):
    code = ErrorCode.TOO_LARGE


class Unauthorized(ChatError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(ChatError):
    code = ErrorCode.FORBIDDEN


class NotFound(ChatError):
    code = ErrorCode.NOT_FOUND


class NotJoined(ChatError):
    code = ErrorCode.NOT_JOINED


class Conflict(ChatError):
    code = ErrorCode.CONFLICT


class RateLimited(ChatError):
    code = ErrorCode.RATE_LIMITED


class Unavailable(ChatError):
    """A backend (store or bus) did not answer: nothing was stored, the client may retry."""

    code = ErrorCode.UNAVAILABLE


class Internal(ChatError):
    """An unexpected server-side failure; details go to the log, not to the client."""

    code = ErrorCode.INTERNAL
