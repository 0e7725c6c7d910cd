"""The HTTP API from a program: accounts, server info, publishing, rooms (httpx).

Each helper makes one request and either returns a small frozen record or raises the
exception named for the error code in the JSON body (`errors.error_for`); a server that
cannot be reached raises `ConnectionFailed`. Nothing is retried here: a `RateLimited`
carries the server's `retry_after`, and `publish` is idempotent by its `id`, so the caller
can simply call it again.

Pass `client=` to reuse one `httpx.AsyncClient` (its `base_url` is then ignored in favour
of the absolute URLs built here); otherwise each call opens and closes its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import attrs
import httpx

from chat_actors.records import WelcomeLimits

from .errors import ChatError, ConnectionFailed, RateLimited, error_for

__all__ = [
    "Credentials", "ServerInfo", "Published", "RoomInfo", "server_info", "register", "login", "publish",
    "create_room", "add_member", "new_message_id",
]

DEFAULT_TIMEOUT_S = 10.0


def new_message_id() -> str:
    """A fresh client message id (32 hex characters): the idempotency key of a send."""
    return uuid.uuid4().hex


@attrs.frozen
class Credentials:
    """An account's token (`POST /api/register` or `/api/login`); `expires_at` in ms since the epoch."""

    user: str
    token: str
    expires_at: int


@attrs.frozen
class ServerInfo:
    """`GET /api/info`: where to open the WebSocket and the limits it enforces."""

    server: str
    ws_url: str
    limits: WelcomeLimits


@attrs.frozen
class Published:
    """An HTTP publish: the stored message's `seq` and `ts`; `duplicate` when the `id` had
    been published before (the original's seq and ts, nothing stored again)."""

    id: str
    seq: int
    ts: int
    duplicate: bool


@attrs.frozen
class RoomInfo:
    name: str
    private: bool
    owner: str | None
    seq: int


def _url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def _client(client: httpx.AsyncClient | None, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(timeout=timeout) as own:
        yield own


async def _request(
    method: str, url: str, *, client: httpx.AsyncClient | None, timeout: float,
    json: Any = None, headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One request; a JSON error body (or a bare 4xx/5xx) becomes its ChatError."""
    try:
        async with _client(client, timeout) as http:
            response = await http.request(method, url, json=json, headers=headers)
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot reach {url}: {exc or type(exc).__name__}") from exc
    if response.status_code < 400:
        return response
    raise _error(response)


def _error(response: httpx.Response) -> ChatError:
    code, message = None, response.reason_phrase
    try:
        body = response.json()
        if isinstance(body, dict):
            code, message = body.get("error"), str(body.get("message") or message)
    except ValueError:
        pass
    error = error_for(code, message, status=response.status_code)
    if isinstance(error, RateLimited):
        retry_after = response.headers.get("retry-after", "")
        error.retry_after = float(retry_after) if retry_after.isdigit() else None
    return error


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise error_for("internal", f"expected a JSON object from {response.url}", status=response.status_code)
    return body


async def server_info(base_url: str, *, client: httpx.AsyncClient | None = None,
                      timeout: float = DEFAULT_TIMEOUT_S) -> ServerInfo:
    """What a client needs to connect: the WebSocket URL and the limits (no auth)."""
    body = _body(await _request("GET", _url(base_url, "/api/info"), client=client, timeout=timeout))
    try:
        return ServerInfo(server=body["server"], ws_url=body["ws_url"], limits=WelcomeLimits(**body["limits"]))
    except (KeyError, TypeError) as exc:
        raise error_for("internal", f"unexpected /api/info body: {exc}") from None


async def _account(path: str, base_url: str, username: str, password: str,
                   client: httpx.AsyncClient | None, timeout: float) -> Credentials:
    response = await _request("POST", _url(base_url, path), client=client, timeout=timeout,
                              json={"username": username, "password": password})
    body = _body(response)
    return Credentials(user=body["user"], token=body["token"], expires_at=body["expires_at"])


async def register(base_url: str, username: str, password: str, *, client: httpx.AsyncClient | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> Credentials:
    """Create an account and return its first token. Conflict if the name is taken,
    BadRequest for a name or password off the rules, RateLimited when the server's password
    queue is full."""
    return await _account("/api/register", base_url, username, password, client, timeout)


async def login(base_url: str, username: str, password: str, *, client: httpx.AsyncClient | None = None,
                timeout: float = DEFAULT_TIMEOUT_S) -> Credentials:
    """A fresh token for an existing account; Unauthorized for a wrong name or password."""
    return await _account("/api/login", base_url, username, password, client, timeout)


async def publish(
    base_url: str, room: str, text: str, *, token: str | None = None, api_key: str | None = None,
    id: str | None = None, meta: dict[str, Any] | None = None,
    client: httpx.AsyncClient | None = None, timeout: float = DEFAULT_TIMEOUT_S,
) -> Published:
    """Publish over HTTP as the token's user, or as `system` with the server's API key.

    Creates an unknown public room. Safe to call again with the same `id` after a failure
    that left the outcome unknown: the original is answered (`duplicate=True`).
    """
    message_id = id or new_message_id()
    headers = _auth(token)
    if api_key is not None:
        headers["X-Api-Key"] = api_key
    payload: dict[str, Any] = {"id": message_id, "text": text}
    if meta is not None:
        payload["meta"] = meta
    response = await _request("POST", _url(base_url, f"/api/rooms/{quote(room, safe='')}/messages"),
                              client=client, timeout=timeout, json=payload, headers=headers)
    body = _body(response)
    return Published(id=message_id, seq=body["seq"], ts=body["ts"], duplicate=response.status_code == 200)


async def create_room(base_url: str, name: str, *, token: str, private: bool = False,
                      client: httpx.AsyncClient | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> RoomInfo:
    """Create a room owned by the token's user; Conflict if it exists."""
    response = await _request("POST", _url(base_url, "/api/rooms"), client=client, timeout=timeout,
                              json={"name": name, "private": private}, headers=_auth(token))
    body = _body(response)
    return RoomInfo(name=body["name"], private=body["private"], owner=body.get("owner"), seq=body["seq"])


async def add_member(base_url: str, room: str, user: str, *, token: str,
                     client: httpx.AsyncClient | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """The owner of a private room lets `user` in (Forbidden for anyone else, NotFound for an unknown user)."""
    await _request("POST", _url(base_url, f"/api/rooms/{quote(room, safe='')}/members"), client=client,
                   timeout=timeout, json={"user": user}, headers=_auth(token))
