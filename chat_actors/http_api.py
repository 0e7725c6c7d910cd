"""The HTTP API (PROTOCOL section 8) as a Starlette app served by hypercorn in-process.

Handlers never touch room state: reads of durable data go to the store, anything that
involves a room's live state (publish, presence, access) goes through the room actor, so
HTTP and WebSocket clients see one ordering and one set of rules.

An invalid request is never a 500: bodies are parsed under the wire's number rules
(`protocol.loads_json`) and validated field by field as they came (a publish goes through
`protocol.decode_send_fields`, never through a re-encoding, which a deeply nested `meta` would
break first); query integers are small decimal numbers checked before `int()`; ambiguous
credentials (two `Authorization` or `X-Api-Key` headers) are 401. Body size, HTTP version and
what happens to a body nobody read are `http_limits.RequestGuard`'s.
"""

from __future__ import annotations

import collections
import hmac
import math
import re
import time
from typing import Any, Awaitable, Callable

import attrs
import orjson
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import PasswordHasher, TokenIssuer, validate_password, validate_username
from .cluster import ClusterLink
from .commands import AccessCmd, GrantCmd, PresenceCmd, PublishCmd, PublishResult, Reply
from .config import Config
from .errors import (
    HTTP_STATUS,
    ChatError,
    ErrorCode,
    Forbidden,
    NotFound,
    ProtocolError,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from .fair import FairLimiter, client_reads
from .identity import Authenticator
from .http_limits import ASGIApp, RequestGuard
from .limits import TokenBucket
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .protocol import Limits, decode_send_fields, encode_event, is_valid_room, loads_json, message_from_stored
from .records import HistoryPage
from .registry import Registry
from .store import Store
from .web_assets import web_routes

#: how many users' HTTP publish buckets are remembered (least recently used go first)
MAX_BUCKETS = 10000
#: PROTOCOL section 3: integers within +-(2**53-1); seq cursors are never negative
MAX_QUERY_INT = 2**53 - 1
_MAX_QUERY_DIGITS = len(str(MAX_QUERY_INT))


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> Response:
    response = _json({"error": code.value, "message": message}, HTTP_STATUS[code])
    if headers:
        response.headers.update(headers)
    return response


def readiness(components: dict[str, str]) -> tuple[str, int]:
    """PROTOCOL section 8 `/readyz`: (status, HTTP status) from each component's "ok"/"down".

    The store is the source of truth, so without it nothing can be served: 503 "unavailable".
    Without the bus the node still serves its own clients: 200 "degraded".
    """
    if components.get("store") != "ok":
        return "unavailable", 503
    if any(state != "ok" for state in components.values()):
        return "degraded", 200
    return "ok", 200


def query_int(request: Request, name: str) -> int | None:
    """The query parameter `name` as an integer in 0..2**53-1, None when absent or empty.

    Anything else is a ProtocolError (400): not decimal digits, more digits than 2**53-1 has
    (checked before `int()`, which refuses over 4,300 digits with a ValueError), over 2**53-1,
    or given twice (which value would count is a guess).
    """
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ProtocolError(f"{name} is given more than once")
    if not values or values[0] == "":
        return None
    raw = values[0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_QUERY_DIGITS):
        raise ProtocolError(f"{name} must be a decimal integer in 0..2**53-1")
    value = int(raw)
    if value > MAX_QUERY_INT:
        raise ProtocolError(f"{name} must be a decimal integer in 0..2**53-1")
    return value


@attrs.define
class HttpDeps:
    config: Config
    store: Store
    registry: Registry
    metrics: Metrics
    tokens: TokenIssuer
    hasher: PasswordHasher
    authenticate: Authenticator
    ready: Callable[[], Awaitable[dict[str, str]]]
    #: shared with the WebSocket side: store reads made for clients, fairly per user
    reads: FairLimiter = attrs.field(factory=client_reads)
    #: the other nodes, told about grants (None: a single node)
    cluster: ClusterLink | None = None
    #: "chat-actors/<version>", as in welcome
    server_name: str = ""
    #: the port the WebSocket listener really bound (the configured one may be 0)
    ws_port: int = 0


class HttpApi:
    """Route handlers bound to one server's dependencies."""

    def __init__(self, deps: HttpDeps) -> None:
        self.d = deps
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._limits = Limits.from_config(deps.config)

    # -- helpers -----------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        """The JSON object of the body. Its size is bounded before this reads it: Starlette's
        `max_body_size` stops a streamed body at the limit with 413 (see `build_app`)."""
        body = loads_json(await request.body())
        if not isinstance(body, dict):
            raise ProtocolError("request body must be a JSON object")
        return body

    async def _user(self, request: Request) -> str:
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:
            raise Unauthorized("more than one Authorization header")
        header = headers[0] if headers else None
        if not header:
            raise Unauthorized("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        return (await self.d.authenticate(token.strip())).user

    def _room(self, request: Request) -> str:
        room = request.path_params["room"]
        if not is_valid_room(room):
            raise ProtocolError("invalid room name")
        return room

    async def _rate_ok(self, user: str) -> bool:
        """The user's publish bucket: the cluster's (shared by every node, in Redis) when
        there is one and it answers, else this node's."""
        config, cluster = self.d.config, self.d.cluster
        if cluster is not None:
            shared = await cluster.take_token(f"rate:publish:{user}", rate=config.rate_per_second,
                                              burst=config.rate_burst)
            if shared is not None:
                return shared
        now = trio.current_time()
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = TokenBucket(self.d.config.rate_per_second, self.d.config.rate_burst, now)
            self._buckets[user] = bucket
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user)
        return bucket.take(now)

    async def _check_access(self, room: str, user: str) -> None:
        reply: Reply[bool] = Reply()
        await self.d.registry.send(room, AccessCmd(user, reply))
        await reply.wait()

    def _token_body(self, user: str) -> dict[str, Any]:
        token, expires_at = self.d.tokens.issue(user)
        return {"user": user, "token": token, "expires_at": expires_at}

    # -- accounts ------------------------------------------------------------------------------
    async def register(self, request: Request) -> Response:
        body = await self._body(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ProtocolError("username and password must be strings")
        validate_username(username)
        validate_password(password)
        hashed = await self.d.hasher.hash(password)
        await self.d.store.create_user(username, hashed, int(time.time() * 1000))
        self.d.authenticate.remember(username)
        return _json(self._token_body(username), 201)

    async def login(self, request: Request) -> Response:
        body = await self._body(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ProtocolError("username and password must be strings")
        record = await self.d.store.get_user(username)
        # verify(None, ...) costs as much as a real check, so unknown names are not revealed
        if not await self.d.hasher.verify(record.password_hash if record else None, password):
            raise Unauthorized("bad credentials")
        return _json(self._token_body(username), 200)

    # -- rooms ---------------------------------------------------------------------------------
    async def list_rooms(self, request: Request) -> Response:
        user = await self._user(request)
        listing = await self.d.store.list_rooms(user)
        rooms = [
            {"name": r.info.name, "private": r.info.kind == "private", "seq": r.info.last_seq, "members": r.members}
            for r in listing
        ]
        return _json({"rooms": rooms})

    async def create_room(self, request: Request) -> Response:
        user = await self._user(request)
        body = await self._body(request)
        name, private = body.get("name"), body.get("private", False)
        if not isinstance(name, str) or not is_valid_room(name) or name.startswith("dm:"):
            raise ProtocolError("name must match ^[A-Za-z0-9_.-]{1,64}$")
        if not isinstance(private, bool):
            raise ProtocolError("private must be a boolean")
        kind = "private" if private else "public"
        cap = self.d.config.max_rooms_per_user
        if await self.d.store.count_user_rooms(user) >= cap:   # the owner becomes a member
            raise TooLarge(f"{user} is a member of {cap} rooms already (the most allowed); leave one first")
        info = await self.d.store.create_room(name, kind=kind, owner=user, ts=int(time.time() * 1000))
        return _json({"name": info.name, "private": private, "owner": info.owner, "seq": info.last_seq}, 201)

    async def add_member(self, request: Request) -> Response:
        caller = await self._user(request)
        room = self._room(request)
        body = await self._body(request)
        member = body.get("user")
        if not isinstance(member, str):
            raise ProtocolError("user must be a string")
        info = await self.d.store.get_room(room)
        if info is None:
            raise NotFound(f"room {room} does not exist")
        if info.owner != caller:
            raise Forbidden("only the room's owner can add members")
        if info.kind != "private":
            raise ProtocolError("members are added to private rooms only")
        if await self.d.store.get_user(member) is None:
            raise NotFound(f"unknown user {member}")
        await self.d.store.add_grant(room, member)
        await self.d.registry.notify(room, GrantCmd(member))
        if self.d.cluster is not None:
            self.d.cluster.grant(room, member)
        return Response(status_code=204)

    async def get_messages(self, request: Request) -> Response:
        user = await self._user(request)
        room = self._room(request)
        before, after, limit = (query_int(request, name) for name in ("before", "after", "limit"))
        if limit is None:
            limit = 50
        if not 1 <= limit <= 200:
            raise ProtocolError("limit must be between 1 and 200")
        await self._check_access(room, user)
        async with self.d.reads.hold(user):
            messages, more = await self.d.store.history(room, before=before, after=after, limit=limit)
        page = HistoryPage(room=room, messages=tuple(message_from_stored(m) for m in messages), more=more)
        return Response(encode_event(page), media_type="application/json")

    async def post_message(self, request: Request) -> Response:
        d = self.d
        api_keys = request.headers.getlist("x-api-key")
        if api_keys:
            # A supplied key decides, whatever bearer token comes with it.
            if len(api_keys) > 1 or not _key_matches(api_keys[0], d.config.api_key):
                raise Unauthorized("wrong API key")
            user = "system"
        else:
            user = await self._user(request)
        room = self._room(request)
        body = await self._body(request)
        # Validated as the client sent it (no re-encoding), exactly like a WebSocket `send`;
        # `room` comes from the path. Absent fields stay absent, so they are named as missing.
        fields = {k: body[k] for k in ("id", "text", "meta") if k in body}
        cmd = decode_send_fields({**fields, "room": room}, self._limits)
        if user != "system" and not await self._rate_ok(user):
            raise RateLimited("rate limit exceeded")
        reply: Reply[PublishResult] = Reply()
        await d.registry.send(room, PublishCmd(user, cmd.id, cmd.text, cmd.meta, reply=reply, via_http=True))
        result = await reply.wait()
        return _json({"seq": result.seq, "ts": result.ts}, 200 if result.duplicate else 201)

    async def presence(self, request: Request) -> Response:
        user = await self._user(request)
        room = self._room(request)
        reply: Reply[tuple[tuple[str, int], ...]] = Reply()
        await self.d.registry.send(room, PresenceCmd(user, reply=reply))
        members = await reply.wait()
        return _json({"members": [{"user": u, "connections": n} for u, n in members]})

    # -- operations ----------------------------------------------------------------------------
    def ws_url(self, request: Request) -> str:
        """Where a browser that sent `request` connects its WebSocket (`/api/info`, the page's CSP)."""
        cfg = self.d.config
        return cfg.public_ws_url or public_ws_url(request, cfg.ws_host, self.d.ws_port)

    async def info(self, request: Request) -> Response:
        """What a browser client needs before it connects (PROTOCOL section 8 `/api/info`)."""
        cfg = self.d.config
        return _json({
            "server": self.d.server_name,
            "ws_url": self.ws_url(request),
            "limits": {
                "max_frame_bytes": cfg.max_frame_bytes, "max_text_chars": cfg.max_text_chars,
                "rate_per_second": cfg.rate_per_second, "rate_burst": cfg.rate_burst,
            },
        })

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        components = await self.d.ready()
        status, http_status = readiness(components)
        return _json({"status": status, **components}, http_status)

    async def metrics(self, request: Request) -> Response:
        return Response(self.d.metrics.render(), media_type=CONTENT_TYPE_LATEST)


#: a Host header's host part that may go into a URL as it is: a name, IPv4, or a bracketed IPv6
_URL_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def public_ws_url(request: Request, ws_host: str, ws_port: int) -> str:
    """`ws://<the host the client used>:<WebSocket port>/ws` (wss:// behind https://).

    The host comes from the request's Host header, so a browser that reached the page as
    `localhost` or by a LAN address connects its WebSocket the same way; a header that is
    absent or not a plain host name or address falls back to the listener's configured host.
    """
    host = request.headers.get("host", "").strip()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if not _URL_HOST.fullmatch(host):
        host = f"[{ws_host}]" if ":" in ws_host else ws_host
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return f"{scheme}://{host}:{ws_port}/ws"


def _key_matches(supplied: str, configured: str | None) -> bool:
    """Constant-time comparison of an X-Api-Key header with CHAT_API_KEY (none set: no match).

    On bytes: `hmac.compare_digest` refuses str with non-ASCII characters (TypeError, a 500),
    and a header can carry any latin-1 byte. Starlette decoded the header as latin-1, so
    encoding it back gives the bytes as sent; the key is compared as its UTF-8 bytes.
    """
    if configured is None:
        return False
    return hmac.compare_digest(supplied.encode("latin-1"), configured.encode("utf-8"))


def _status_code(status: int) -> ErrorCode:
    for code, value in HTTP_STATUS.items():
        if value == status and code is not ErrorCode.NOT_JOINED:
            return code
    return ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL


def build_app(deps: HttpDeps) -> ASGIApp:
    """The ASGI app: the routes in Starlette, wrapped in `RequestGuard` (http_limits).

    `max_body_size` is Starlette's own streamed body limit: a body that passes
    `max_frame_bytes` raises 413 (an HTTPException, answered as JSON `too_large` below) on
    the chunk that passes it, whether or not it declared a length; a declared length over
    it is answered by `RequestGuard` before the route runs.
    """
    api = HttpApi(deps)
    # 429 says when to come back: the hasher's estimate, else one publish token's refill time.
    publish_retry_s = str(max(1, math.ceil(1 / deps.config.rate_per_second)))

    def count(code: ErrorCode) -> None:
        deps.metrics.errors.labels(code.value).inc()

    async def on_chat_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ChatError)
        count(exc.code)
        headers = None
        if exc.code is ErrorCode.RATE_LIMITED:
            headers = {"Retry-After": str(getattr(exc, "retry_after_s", None) or publish_retry_s)}
        return error_response(exc.code, exc.message, headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _status_code(exc.status_code)
        count(code)
        return _json({"error": code.value, "message": str(exc.detail)}, exc.status_code)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # The body stopped arriving for CHAT_HANDSHAKE_TIMEOUT (hypercorn's read_timeout
        # ended the stream) or the client went away: the client's fault, not a 500 with a
        # traceback. hypercorn closes the connection after this answer, if it goes out at all.
        return error_response(ErrorCode.BAD_REQUEST, "the request body stopped arriving before it was complete")

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(ErrorCode.INTERNAL, "internal error")

    routes = [
        Route("/api/register", api.register, methods=["POST"]),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/rooms", api.list_rooms, methods=["GET"]),
        Route("/api/rooms", api.create_room, methods=["POST"]),
        Route("/api/rooms/{room}/members", api.add_member, methods=["POST"]),
        Route("/api/rooms/{room}/messages", api.get_messages, methods=["GET"]),
        Route("/api/rooms/{room}/messages", api.post_message, methods=["POST"]),
        Route("/api/rooms/{room}/presence", api.presence, methods=["GET"]),
        Route("/api/info", api.info, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *web_routes(api.ws_url),   # /, the page's scripts and stylesheet (web_assets.py)
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ChatError: on_chat_error, HTTPException: on_http_error, ClientDisconnect: on_disconnect,
            Exception: on_crash,
        },
        max_body_size=deps.config.max_frame_bytes,
    )
    return RequestGuard(
        app,
        max_body_bytes=deps.config.max_frame_bytes,
        drain_timeout_s=deps.config.handshake_timeout_s,
        on_refused=count,
    )
