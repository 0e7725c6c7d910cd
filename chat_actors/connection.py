"""A client session on top of one WebSocket: auth, welcome, the reader loop and routing.

The connection is the single writer of its socket. Room actors call `deliver` /
`deliver_messages` synchronously; those go straight to the transport, except while the
connection *holds*: during the welcome replay of offline direct messages and during a
`join ... since` replay, live frames are parked (bounded) and released after the replay,
skipping messages the replay already carried, so every room stays gap-free and in order.

The reader task decodes and validates each frame, applies the rate limit, and routes the
command to a room actor. Awaiting a full room inbox is the backpressure a flooding client
feels. Joins and history wait for the actor's answer; sends do not (acks arrive later).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .auth import Claims
from .commands import (
    AccessCmd,
    DisconnectCmd,
    JoinCmd,
    JoinResult,
    LeaveCmd,
    PresenceCmd,
    PublishCmd,
    ReadCmd,
    Reply,
    TypingCmd,
)
from .config import Config
from .errors import ChatError, CloseCode, ErrorCode, ProtocolError, RateLimited, Unavailable
from .fair import FairLimiter, client_reads
from .frames import encode_text_frame
from .identity import Authenticator
from .limits import ErrorBudget, TokenBucket
from .metrics import Metrics
from .protocol import Limits, decode_command, dm_room, encode_event, message_from_stored, message_json
from .records import (
    Auth,
    Dm,
    ErrorEvent,
    History,
    HistoryPage,
    Join,
    Joined,
    Leave,
    Ping,
    Pong,
    PresenceQuery,
    Read,
    RoomEntry,
    Send,
    Synced,
    Typing,
    Welcome,
    WelcomeLimits,
)
from .registry import Registry
from .room_state import MAX_REPLAY
from .sessions import Sessions
from .store import Store
from .transport import ConnectionClosed, WebSocket

log = logging.getLogger(__name__)


@attrs.frozen
class ConnectionDeps:
    """Everything a connection needs, built once by the composition root."""

    config: Config
    registry: Registry
    store: Store
    sessions: Sessions
    metrics: Metrics
    authenticate: Authenticator
    server_name: str
    #: this node's CHAT_NODE_ID, shown in welcome
    node_id: str | None = None
    #: store reads made for clients (welcome, replays, history), shared out fairly per user
    reads: FairLimiter = attrs.field(factory=client_reads)

    @property
    def limits(self) -> Limits:
        return Limits.from_config(self.config)


def _now_ms() -> int:
    return int(time.time() * 1000)


#: close codes the server chooses to end a connection, as `chat_evictions{reason}` labels
EVICTION_REASONS = {
    CloseCode.IDLE: "idle",
    CloseCode.UNAUTHORIZED: "unauthorized",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.RATE_LIMITED: "rate_limited",
    CloseCode.POLICY: "errors",
    CloseCode.TOO_BIG: "too_big",
    CloseCode.INVALID_DATA: "invalid_utf8",
    CloseCode.INTERNAL: "internal",
}


async def handle_websocket(ws: WebSocket, deps: ConnectionDeps) -> None:
    """Transport handler: authenticate (handshake token or first frame), then serve.

    Evictions are counted here, once per connection, from the close code whoever closed
    it chose (the transport evicts slow consumers and idle peers itself).
    """
    try:
        claims = ws.handshake.principal
        if claims is None:
            claims = await _first_frame_auth(ws, deps)
            if claims is None:
                return
        connection = Connection(ws, claims, deps)
        await connection.run()
    finally:
        reason = EVICTION_REASONS.get(ws.close_code)  # type: ignore[call-overload]
        if reason is not None:
            deps.metrics.evictions.labels(reason).inc()


async def _first_frame_auth(ws: WebSocket, deps: ConnectionDeps) -> Claims | None:
    """PROTOCOL section 2 (3): the first frame must be a valid `auth` within the timeout."""
    with trio.move_on_after(deps.config.auth_timeout_s) as scope:
        try:
            data = await ws.receive()
        except ConnectionClosed:
            return None
    if scope.cancelled_caught:
        ws.close(CloseCode.UNAUTHORIZED, "authentication timeout")
        return None
    try:
        if isinstance(data, bytes):
            raise ProtocolError("expected an auth frame")
        cmd = decode_command(data, deps.limits)
        if not isinstance(cmd, Auth):
            raise ProtocolError("the first frame must be auth")
        return await deps.authenticate(cmd.token)
    except ChatError as error:
        ws.close(CloseCode.UNAUTHORIZED, error.message[:100])
        return None


class Connection:
    """One authenticated client connection (a `Peer` for room actors)."""

    def __init__(self, ws: WebSocket, claims: Claims, deps: ConnectionDeps) -> None:
        self.id = ws.id
        self.user = claims.user
        self._ws = ws
        self._exp_ms = claims.exp_ms
        self._deps = deps
        self._limits = deps.limits
        self.rooms: set[str] = set()
        #: direct room -> the highest seq this connection was handed or its welcome listed:
        #: a direct message at or below it is not sent again (a catch-up after a bus outage
        #: may deliver from below it), and where a catch-up for this device must start
        self._direct: dict[str, int] = {}
        self._hold: list[tuple[str | None, int, bytes, bool]] | None = None
        self._hold_bytes = 0
        now = trio.current_time()
        self._bucket = TokenBucket(deps.config.rate_per_second, deps.config.rate_burst, now)
        self._budget = ErrorBudget()

    # -- Peer: synchronous deliveries from actors -----------------------------------------
    def deliver(self, frame: bytes, durable: bool) -> bool:
        if self._hold is None:
            return self._ws.deliver(frame, durable=durable)
        return self._park(None, 0, frame, durable)

    def deliver_messages(self, room: str, items: Sequence[tuple[bytes, int]], blob: bytes) -> None:
        if room.startswith("dm:"):
            last = self._direct.get(room, 0)
            if items[0][1] <= last:
                items = [item for item in items if item[1] > last]
                if not items:
                    return
                blob = b"".join(frame for frame, _ in items)
            self._direct[room] = items[-1][1]
        if self._hold is None:
            self._ws.deliver(blob, durable=True)
        else:
            for frame, seq in items:
                self._park(room, seq, frame, True)

    def send_event(self, event: Any, durable: bool = True) -> bool:
        return self.deliver(encode_text_frame(encode_event(event)), durable)

    def direct_seen(self, room: str) -> int:
        return self._direct.get(room, 0)

    def close(self, code: int, reason: str) -> None:
        self._ws.close(code, reason)

    def send_error(self, error: ChatError) -> None:
        code = error.code.value
        self._deps.metrics.errors.labels(code).inc()
        self.send_event(ErrorEvent(code=code, message=error.message, ref=error.ref))
        if error.code is not ErrorCode.RATE_LIMITED and self._budget.spend(trio.current_time()):
            self._ws.close(CloseCode.POLICY, "too many errors")

    # -- holding live frames during a replay ------------------------------------------------
    def _park(self, room: str | None, seq: int, frame: bytes, durable: bool) -> bool:
        limit = self._deps.config.send_queue_bytes
        size = self._hold_bytes + self._ws.backlog_bytes + len(frame)
        if not durable and size > limit // 2:
            return False
        if durable and size > limit:
            self._ws.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return False
        assert self._hold is not None
        self._hold.append((room, seq, frame, durable))
        self._hold_bytes += len(frame)
        return True

    def _hold_begin(self) -> None:
        self._hold = []
        self._hold_bytes = 0

    def _hold_release(self, replayed: dict[str, int] | None = None) -> None:
        """Deliver parked frames in order, minus messages a replay already carried."""
        held, self._hold, self._hold_bytes = self._hold or [], None, 0
        deliver = self._ws.deliver
        for room, seq, frame, durable in held:
            if room is not None and replayed and seq <= replayed.get(room, 0):
                continue
            deliver(frame, durable=durable)

    def _send_now(self, event: Any) -> None:
        """A reply that must reach the socket ahead of anything parked."""
        self._ws.deliver(encode_text_frame(encode_event(event)), durable=True)

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        deps = self._deps
        # The upgrade already answered 429 beyond the cap; this check and the add below have
        # no await between them, so racing upgrades (or first-frame auths) cannot exceed it.
        if deps.sessions.count(self.user) >= deps.config.max_connections_per_user:
            self._ws.close(CloseCode.POLICY, "too many connections for this user")
            return
        deps.sessions.add(self)
        self._hold_begin()
        try:
            if await self._welcome():
                expiry = trio.current_time() + max(0.0, self._exp_ms / 1000 - time.time())
                self._ws.close_at(expiry, CloseCode.UNAUTHORIZED, "token expired")
                await self._read_loop()
        finally:
            self._hold = None
            deps.sessions.remove(self)
            await self._announce_disconnect()

    async def _welcome(self) -> bool:
        """welcome, then undelivered direct messages (paced), then synced."""
        deps, ws = self._deps, self._ws
        cfg = deps.config
        try:
            async with deps.reads.hold(self.user):
                rooms = await deps.store.user_rooms(self.user, cfg.max_rooms_per_user)
            for entry in rooms:
                if entry.room.startswith("dm:") and entry.seq > self._direct.get(entry.room, 0):
                    self._direct[entry.room] = entry.seq
            self._send_now(Welcome(
                user=self.user, session=self.id, server=deps.server_name, heartbeat=cfg.heartbeat_s,
                limits=WelcomeLimits(
                    max_frame_bytes=cfg.max_frame_bytes, max_text_chars=cfg.max_text_chars,
                    rate_per_second=cfg.rate_per_second, rate_burst=cfg.rate_burst,
                ),
                rooms=tuple(RoomEntry(room=r.room, seq=r.seq, read=r.read) for r in rooms),
                node=deps.node_id,
            ))
            # welcome's rooms carry each direct room's seq and read cursor: ask the store for
            # undelivered direct messages only when one of them has any (most connects: none)
            pending = any(r.seq > r.read for r in rooms if r.room.startswith("dm:"))
            backlog: list = []
            if pending:
                async with deps.reads.hold(self.user):
                    backlog = await deps.store.undelivered_direct(self.user, MAX_REPLAY)
        except ChatError as error:
            log.warning("conn %s: store unavailable during welcome: %s", self.id, error)
            self._hold = None
            ws.close(CloseCode.INTERNAL, "store unavailable")
            return False
        replayed: dict[str, int] = {}
        try:
            for stored in backlog:
                await ws.send_paced(encode_text_frame(message_json(message_from_stored(stored))))
                replayed[stored.room] = stored.seq
        except ConnectionClosed:
            return False
        self._send_now(Synced())
        self._hold_release(replayed)
        return True

    async def _announce_disconnect(self) -> None:
        """Tell every joined room, so presence enters its grace period (even while closing)."""
        if not self.rooms:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self._deps.config.graceful_timeout_s):
            for room in list(self.rooms):
                try:
                    await self._deps.registry.send(room, DisconnectCmd(self))
                except Unavailable:
                    return

    async def _read_loop(self) -> None:
        ws, limits = self._ws, self._limits
        while True:
            try:
                data = await ws.receive()
            except ConnectionClosed:
                return
            if isinstance(data, bytes):
                self.send_error(ProtocolError("binary frames are not supported; send JSON text"))
                continue
            try:
                cmd = decode_command(data, limits)
            except ChatError as error:
                self.send_error(error)
                continue
            try:
                await self._dispatch(cmd)
            except ConnectionClosed:
                return
            except ChatError as error:
                error.ref = getattr(cmd, "ref", None)
                self.send_error(error)

    # -- commands --------------------------------------------------------------------------
    def _rate_ok(self, ref: str | int | None) -> bool:
        now = trio.current_time()
        if self._bucket.take(now):
            return True
        self.send_error(RateLimited("rate limit exceeded", ref=ref))
        if self._bucket.limited(now):
            self._ws.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
        return False

    async def _dispatch(self, cmd: object) -> None:
        registry = self._deps.registry
        if isinstance(cmd, Send):
            if self._rate_ok(cmd.ref):
                await registry.send(cmd.room, PublishCmd(self.user, cmd.id, cmd.text, cmd.meta, cmd.ref, peer=self))
        elif isinstance(cmd, Typing):
            if self._rate_ok(cmd.ref):
                await registry.send(cmd.room, TypingCmd(self, cmd.ref))
        elif isinstance(cmd, Read):
            # wait for the commit, so a reconnect right after sees the cursor in `welcome`
            moved: Reply[bool] = Reply()
            await registry.send(cmd.room, ReadCmd(self, cmd.seq, cmd.ref, moved))
            await moved.wait()
        elif isinstance(cmd, Join):
            await self._join(cmd)
        elif isinstance(cmd, Leave):
            # forget the room only once the actor has the leave: cancelled before that (the
            # peer reset), _announce_disconnect must still tell it
            await registry.send(cmd.room, LeaveCmd(self, cmd.ref))
            self.rooms.discard(cmd.room)
        elif isinstance(cmd, Dm):
            if cmd.to == self.user:
                raise ProtocolError("cannot send a direct message to yourself")
            if self._rate_ok(cmd.ref):
                room = dm_room(self.user, cmd.to)
                await registry.send(room, PublishCmd(
                    self.user, cmd.id, cmd.text, cmd.meta, cmd.ref, peer=self, direct_to=cmd.to,
                ))
        elif isinstance(cmd, History):
            if self._rate_ok(cmd.ref):
                await self._history(cmd)
        elif isinstance(cmd, PresenceQuery):
            await registry.send(cmd.room, PresenceCmd(self.user, cmd.ref, peer=self))
        elif isinstance(cmd, Ping):
            self.send_event(Pong(ts=_now_ms(), ref=cmd.ref))
        elif isinstance(cmd, Auth):
            raise ProtocolError("already authenticated")
        else:  # pragma: no cover - the codec only yields the types above
            raise ProtocolError("unsupported command")

    async def _join(self, cmd: Join) -> None:
        """Join, replay `since` (paced, never partial), answer `joined`, then go live."""
        deps = self._deps
        reply: Reply[JoinResult] = Reply()
        self._hold_begin()
        replayed: dict[str, int] = {}
        joined_before = cmd.room in self.rooms
        # noted before the answer: a join answered after our wait gave up still gets the
        # DisconnectCmd that takes this connection out of the room again
        self.rooms.add(cmd.room)
        try:
            await deps.registry.send(cmd.room, JoinCmd(self, cmd.since, cmd.ref, reply))
            try:
                result = await reply.wait()
            except Unavailable:
                raise
            except ChatError:
                if not joined_before:
                    self.rooms.discard(cmd.room)
                raise
            recovered = result.recovered
            if cmd.since is not None and recovered and result.seq > cmd.since:
                try:
                    async with deps.reads.hold(self.user):
                        missed = await deps.store.messages_between(cmd.room, cmd.since, result.seq, MAX_REPLAY)
                except ChatError:
                    recovered = False
                    missed = []
                for stored in missed:
                    await self._ws.send_paced(encode_text_frame(message_json(message_from_stored(stored))))
                if recovered:
                    replayed[cmd.room] = result.seq
                    if cmd.room.startswith("dm:") and result.seq > self._direct.get(cmd.room, 0):
                        self._direct[cmd.room] = result.seq
            self._send_now(Joined(
                room=cmd.room, seq=result.seq, members=result.members, recovered=recovered, ref=cmd.ref,
            ))
        finally:
            if self._hold is not None:
                self._hold_release(replayed)

    async def _history(self, cmd: History) -> None:
        deps = self._deps
        reply: Reply[bool] = Reply()
        await deps.registry.send(cmd.room, AccessCmd(self.user, reply))
        await reply.wait()
        async with deps.reads.hold(self.user):
            messages, more = await deps.store.history(cmd.room, before=cmd.before, after=cmd.after, limit=cmd.limit)
        page = HistoryPage(
            room=cmd.room, messages=tuple(message_from_stored(m) for m in messages), more=more, ref=cmd.ref,
        )
        await self._ws.send_paced(encode_text_frame(encode_event(page)))
