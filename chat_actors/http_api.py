"""The HTTP API (PROTOCOL section 8) as a Starlette app served by hypercorn in-process.

Handlers never touch room state: reads of durable data go to the store, anything that
involves a room's live state (publish, presence, access) goes through the room actor, so
HTTP and WebSocket clients see one ordering and one set of rules.
"""

from __future__ import annotations

import collections
import importlib.resources
import time
from typing import Any, Awaitable, Callable

import attrs
import orjson
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .auth import PasswordHasher, TokenIssuer, validate_password, validate_username
from .commands import AccessCmd, GrantCmd, PresenceCmd, PublishCmd, PublishResult, Reply
from .config import Config
from .errors import HTTP_STATUS, ChatError, ErrorCode, Forbidden, NotFound, ProtocolError, RateLimited, Unauthorized
from .identity import Authenticator
from .limits import TokenBucket
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .protocol import Limits, decode_command, encode_event, is_valid_room, message_from_stored
from .records import HistoryPage, Send
from .registry import Registry
from .store import Store

MAX_BODY_BYTES = 65536
#: how many users' HTTP publish buckets are remembered (least recently used go first)
MAX_BUCKETS = 10000


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(code: ErrorCode, message: str) -> Response:
    return _json({"error": code.value, "message": message}, HTTP_STATUS[code])


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


class HttpApi:
    """Route handlers bound to one server's dependencies."""

    def __init__(self, deps: HttpDeps) -> None:
        self.d = deps
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._limits = Limits.from_config(deps.config)

    # -- helpers -----------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ChatError("request body too large", code=ErrorCode.TOO_LARGE)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProtocolError("request body must be JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError("request body must be a JSON object")
        return body

    async def _user(self, request: Request) -> str:
        header = request.headers.get("authorization")
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

    def _rate_ok(self, user: str) -> bool:
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
        self.d.registry.send_if_active(room, GrantCmd(member))
        return Response(status_code=204)

    async def get_messages(self, request: Request) -> Response:
        user = await self._user(request)
        room = self._room(request)
        query = request.query_params
        cursors: dict[str, int | None] = {}
        for name in ("before", "after", "limit"):
            raw = query.get(name)
            if raw is None or raw == "":
                cursors[name] = None
                continue
            if not (raw.isascii() and raw.isdigit()):
                raise ProtocolError(f"{name} must be a non-negative integer")
            cursors[name] = int(raw)
        limit = 50 if cursors["limit"] is None else cursors["limit"]
        if not 1 <= limit <= 200:  # type: ignore[operator]
            raise ProtocolError("limit must be between 1 and 200")
        await self._check_access(room, user)
        messages, more = await self.d.store.history(
            room, before=cursors["before"], after=cursors["after"], limit=limit,  # type: ignore[arg-type]
        )
        page = HistoryPage(room=room, messages=tuple(message_from_stored(m) for m in messages), more=more)
        return Response(encode_event(page), media_type="application/json")

    async def post_message(self, request: Request) -> Response:
        d = self.d
        api_key = request.headers.get("x-api-key")
        if api_key is not None:
            if d.config.api_key is None or api_key != d.config.api_key:
                raise Unauthorized("wrong API key")
            user = "system"
        else:
            user = await self._user(request)
        room = self._room(request)
        body = await self._body(request)
        wire = {"type": "send", "room": room, "id": body.get("id"), "text": body.get("text")}
        if body.get("meta") is not None:
            wire["meta"] = body["meta"]
        cmd = decode_command(orjson.dumps(wire), self._limits)
        assert isinstance(cmd, Send)
        if user != "system" and not self._rate_ok(user):
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
    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = await self.d.ready()
        ok = all(v == "ok" for v in checks.values())
        return _json({"status": "ready" if ok else "unavailable", **checks}, 200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.d.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def index(self, request: Request) -> Response:
        page = importlib.resources.files("chat_actors").joinpath("web/index.html").read_text("utf-8")
        return HTMLResponse(page)


def _status_code(status: int) -> ErrorCode:
    for code, value in HTTP_STATUS.items():
        if value == status and code is not ErrorCode.NOT_JOINED:
            return code
    return ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL


def build_app(deps: HttpDeps) -> Starlette:
    api = HttpApi(deps)

    async def on_chat_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ChatError)
        deps.metrics.errors.labels(exc.code.value).inc()
        return error_response(exc.code, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _status_code(exc.status_code)
        return _json({"error": code.value, "message": str(exc.detail)}, exc.status_code)

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
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/", api.index, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={ChatError: on_chat_error, HTTPException: on_http_error, Exception: on_crash},
    )
