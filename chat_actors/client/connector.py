"""The connection loop of a chat: connect, run one session, back off, connect again.

Which endings are retried is decided here and nowhere else:

* retried, with exponential backoff and jitter: a refused or dropped TCP connection, a
  connect or `welcome` timeout, an upgrade refused with 429 or 5xx, any close code but
  4001 (1001 server shutting down, 4008 slow consumer, 4029, 1011, ...), a connection the
  keepalive found dead;
* fatal (the chat ends with the error): close code 4001 and an upgrade refused with 401
  (`Unauthorized`: log in again), 400, 403 or 404 (a wrong URL or origin: retrying cannot
  help), and `give_up_after` seconds without a connection (`ConnectionFailed`).

The backoff starts over once a connection stayed up for `BACKOFF_RESET_AFTER_S`, so a
server that accepts and drops at once is still met with growing delays.
"""

from __future__ import annotations

import logging
from typing import Protocol

import orjson
import trio
from trio_websocket import ConnectionRejected, HandshakeError, open_websocket_url

from .errors import ChatError, ConnectionFailed, Internal, Unauthorized, error_for
from .options import ChatOptions
from .session import Session, SessionHandler

__all__ = ["Connector", "ConnectorOwner"]

log = logging.getLogger(__name__)

#: A connection that stayed live this long resets the backoff to its first step.
BACKOFF_RESET_AFTER_S = 5.0
#: Largest server frame accepted (a 200-message history page of long texts is a few MB).
MAX_SERVER_FRAME_CHARS = 64 * 1024 * 1024
#: Upgrade refusals that no retry can fix; the rest (429, 5xx) are retried.
FATAL_UPGRADE_STATUSES = frozenset({400, 401, 403, 404})
#: How long the close handshake of a connection may take.
DISCONNECT_TIMEOUT_S = 2.0


class ConnectorOwner(Protocol):
    """The chat, as the connection loop sees it."""

    async def resume(self, session: Session) -> None:
        """Bring the new connection up to date (rejoin rooms) before it counts as live."""

    def session_live(self, session: Session) -> None: ...

    def session_down(self, session: Session) -> None: ...

    def failed(self, error: ChatError) -> None: ...


class Connector:
    """Runs `run()` in the chat's nursery until `close()` or a fatal ending."""

    def __init__(self, url: str, token: str, options: ChatOptions, handler: SessionHandler,
                 owner: ConnectorOwner) -> None:
        self.url = url
        self._token = token
        self._options = options
        self._handler = handler
        self._owner = owner
        self._closing = trio.Event()
        self.stopped = trio.Event()
        #: connections that reached `synced`
        self.connects = 0
        #: why the last connection ended or failed, for logs and ConnectionFailed
        self.problem = ""
        self._attempt = trio.CancelScope()
        self._live = False

    def close(self) -> None:
        """Close the live connection gracefully (1000), or stop connecting now."""
        self._closing.set()
        if not self._live:
            self._attempt.cancel()

    async def run(self) -> None:
        attempt = 0
        down_since = trio.current_time()
        try:
            while not self._closing.is_set():
                session, fatal = None, None
                with trio.CancelScope() as self._attempt:  # close() cancels a connect attempt
                    session, fatal = await self._connect_once()
                if fatal is not None:
                    self._owner.failed(fatal)
                    return
                if self._closing.is_set():
                    return
                now = trio.current_time()
                if session is not None and session.live:
                    if now - session.live_since >= BACKOFF_RESET_AFTER_S:
                        attempt = 0
                    down_since = now
                delay = self._options.backoff.delay(attempt)
                attempt += 1
                give_up = self._options.give_up_after
                if give_up is not None and now + delay - down_since > give_up:
                    self._owner.failed(ConnectionFailed(f"no connection to {self.url} for {give_up:g} s ({self.problem})"))
                    return
                log.info("reconnecting to %s in %.2f s (%s)", self.url, delay, self.problem)
                with trio.move_on_after(delay):
                    await self._closing.wait()
        except Exception as exc:  # a library bug: surface it rather than reconnect forever
            log.exception("chat client failed")
            self._owner.failed(Internal(f"client library failure: {exc!r}"))
        finally:
            self.stopped.set()

    async def _connect_once(self) -> tuple[Session | None, ChatError | None]:
        """One connection from upgrade to close: (the session if the upgrade succeeded, a
        fatal error if reconnecting cannot help)."""
        session: Session | None = None
        try:
            async with open_websocket_url(
                self.url, extra_headers=[(b"authorization", f"Bearer {self._token}".encode())],
                max_message_size=MAX_SERVER_FRAME_CHARS, connect_timeout=self._options.connect_timeout,
                disconnect_timeout=DISCONNECT_TIMEOUT_S,
            ) as ws:
                session = Session(ws, self._handler)
                await self._run_session(session)
        except ConnectionRejected as exc:
            if exc.status_code in FATAL_UPGRADE_STATUSES:
                return session, _refusal(exc)
            self.problem = f"upgrade refused with HTTP {exc.status_code}"
        except (HandshakeError, OSError) as exc:
            self.problem = f"{type(exc).__name__}: {exc.__cause__ or exc}"
        if session is not None and session.close_code is not None:
            code, reason = session.close_code, session.close_reason
            self.problem = f"closed with {code}" + (f" ({reason})" if reason else "")
            if code == 4001:
                return session, Unauthorized(
                    f"the server closed the connection with 4001: {reason or 'token rejected or expired'}")
        return session, None

    async def _run_session(self, session: Session) -> None:
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                await nursery.start(session.run)
                nursery.start_soon(self._abort_on_close, session)
                with trio.move_on_after(self._options.connect_timeout) as timer:
                    await session.synced.wait()
                if timer.cancelled_caught:
                    self.problem = "no welcome from the server"
                    session.abort()
                    return
                self.connects += 1
                assert session.welcome is not None
                interval = self._options.keepalive or session.welcome.heartbeat
                nursery.start_soon(session.keepalive, interval, interval)
                await self._owner.resume(session)
                session.live, session.live_since = True, trio.current_time()
                self._live = True
                self._owner.session_live(session)
                await session.ended.wait()
        finally:
            self._live = False
            self._owner.session_down(session)

    async def _abort_on_close(self, session: Session) -> None:
        await self._closing.wait()
        session.abort()


def _refusal(exc: ConnectionRejected) -> ChatError:
    """The error for an upgrade refused with an HTTP status (its JSON body names the code)."""
    code, message = None, f"WebSocket upgrade refused with HTTP {exc.status_code}"
    try:
        body = orjson.loads(exc.body or b"")
        if isinstance(body, dict):
            code, message = body.get("error"), str(body.get("message") or message)
    except orjson.JSONDecodeError:
        pass
    return error_for(code, message, status=exc.status_code)
