"""The room actor: one task per active room, the only code that touches its RoomState.

Loop: wait for a command (or a presence/idle deadline), drain everything already queued,
apply it in order, then commit every publish of the drain to the store in one transaction
and only then ack and fan out. Acks therefore always follow durability, and a burst of N
sends costs one commit instead of N.

Fan-out encodes each event once (JSON, then one unmasked WebSocket frame) and hands the same
bytes to every recipient through the synchronous `Peer.deliver*`: the actor never awaits a
connection, so one slow client cannot hold the room.

Messages reach the connections through the room's `Sequencer`, strictly in seq order. On
one node that is a formality (the actor's own commits are the next seqs); in a cluster the
actor also hears other nodes' commits (`RemoteCmd`, from `cluster.py`), holds early ones
back briefly and reads any gap from the store, so bus losses never show to a client.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable

import attrs
import trio

from .bus import GrantChanged, MessageCommitted, PresenceRelay, ReadRelay, RoomHead, TypingRelay
from .commands import (
    AccessCmd,
    CatchUpCmd,
    DisconnectCmd,
    GrantCmd,
    JoinCmd,
    LeaveCmd,
    NodeGoneCmd,
    Peer,
    PresenceCmd,
    PublishCmd,
    PublishResult,
    ReadCmd,
    RemoteCmd,
    RoomCommand,
    TypingCmd,
)
from .errors import ChatError, CloseCode, Forbidden, Internal, NotFound, TooLarge, Unavailable
from .metrics import Metrics
from .frames import encode_text_frame
from .protocol import encode_event, message_from_stored, message_json
from .records import Ack, Left, Message, PresenceList, PresenceMember, ReadEvent, TypingEvent
from .room_state import RoomState
from .sequencer import Sequencer
from .sessions import Sessions
from .store import NewMessage, RoomBatch, RoomSnapshot, Store

if TYPE_CHECKING:
    from .cluster import ClusterLink

log = logging.getLogger(__name__)

#: the most commands one wake-up applies before committing (bounds ack latency under flood)
MAX_BATCH = 1024
#: messages read from the store per gap fill
FILL_PAGE = 500
#: after a failed gap fill (store down), the next attempt
FILL_RETRY_S = 1.0
#: how long a starting actor waits for its room subscription before reading the store
SUBSCRIBE_WAIT_S = 1.0


@attrs.frozen
class RoomDeps:
    """What every room actor shares; passed explicitly by the composition root."""

    store: Store
    sessions: Sessions
    metrics: Metrics
    presence_grace_s: float
    idle_s: float
    max_rooms_per_user: int = 1000
    #: this node's link to the others (None: a single node, nobody to tell)
    cluster: ClusterLink | None = None


def _copy_error(error: ChatError, ref: str | int | None) -> ChatError:
    """A fresh error per command, so a shared failure never carries another command's ref."""
    return type(error)(error.message, code=error.code, ref=ref)


class RoomActor:
    """Owns one room's state; see the module docstring for the loop."""

    def __init__(
        self,
        name: str,
        inbox: trio.MemoryReceiveChannel[RoomCommand],
        deps: RoomDeps,
        retire: Callable[["RoomActor"], bool],
        *,
        start_below: int | None = None,
    ) -> None:
        self.name = name
        self.inbox = inbox
        self.deps = deps
        self._retire = retire
        self.state = RoomState(name, grace_s=deps.presence_grace_s)
        self.link = deps.cluster
        self.state.persist_always = self.link is not None
        self.seq: Sequencer[Peer | None] = Sequencer(0)
        #: spawned for a direct message from another node: deliver from that one on
        self._start_below = start_below
        self._loaded = False
        #: set by the registry when a bus event found the inbox full
        self.lost_events = False
        #: the first seq this node committed but could not publish (told at the next catch-up)
        self._unpublished: int | None = None
        self._cmds: list[PublishCmd] = []
        self._msgs: list[NewMessage] = []
        #: answers that must wait until this drain's membership/cursor changes are committed,
        #: with the command each answers (failed instead if the actor crashes first)
        self._after_commit: list[tuple[RoomCommand, Callable[[], object]]] = []
        #: the drain being applied and how far: what a crash must still answer
        self._batch: list[RoomCommand] = []
        self._pos = 0
        #: publishes handed to the store and not yet answered
        self._committing: list[PublishCmd] = []
        self._last_active = 0.0
        self._handlers = {
            JoinCmd: self._join,
            LeaveCmd: self._leave,
            PublishCmd: self._publish,
            TypingCmd: self._typing,
            ReadCmd: self._read,
            PresenceCmd: self._presence,
            AccessCmd: self._access,
            DisconnectCmd: self._disconnect,
            GrantCmd: self._grant,
            RemoteCmd: self._remote,
            CatchUpCmd: self._catch_up,
            NodeGoneCmd: self._node_gone,
        }

    @property
    def inbox_depth(self) -> int:
        return self.inbox.statistics().current_buffer_used

    async def run(self) -> None:
        """Serve until retired (idle) or until the registry closes the inbox (shutdown).

        On shutdown the inbox is drained and the last batch committed before returning.
        """
        self._last_active = trio.current_time()
        link = self.link
        sub = link.subscribe_room(self.name) if link is not None else None
        try:
            await self._start(sub)
            await self._serve()
        finally:
            if sub is not None:
                sub.close()

    async def _start(self, sub: object) -> None:
        """Subscribe first, then read the store and the presence snapshot, so nothing
        committed or announced in between is missed."""
        link = self.link
        if link is not None and sub is not None:
            with trio.move_on_after(SUBSCRIBE_WAIT_S):
                await sub.wait_active()  # type: ignore[attr-defined]
        try:
            await self._reload()
        except ChatError:
            log.warning("room %s: store unavailable at start; will retry on demand", self.name)
        if link is not None:
            self.state.remote_snapshot(await link.presence_snapshot(self.name))

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                await self._flush()
                return
            self._batch = batch
            for self._pos, cmd in enumerate(batch):
                await self._apply(cmd)
            self._batch = []
            await self._flush()
            now = trio.current_time()
            if self.lost_events:
                self.lost_events = False
                await self._catch_up(CatchUpCmd(presence=False))
            if self.seq.fill_at is not None and self.seq.fill_at <= now:
                await self._fill(now)
            events, gone = self.state.expire(now)
            for event in events:
                self._broadcast(encode_event(event), durable=False)
            for user in gone:
                self._relay_presence(user)
            if batch:
                self._last_active = now
            elif self.state.idle() and now - self._last_active >= self.deps.idle_s:
                if self._retire(self):
                    return
                self._last_active = now  # a command raced in: stay, and wait a full period again

    async def _next_batch(self) -> list[RoomCommand] | None:
        """Everything queued right now ([] on a deadline, None once the inbox is closed)."""
        # the idle deadline only matters once nothing live depends on this actor
        deadline = self._last_active + self.deps.idle_s if self.state.idle() else math.inf
        grace = self.state.next_deadline()
        if grace is not None:
            deadline = min(deadline, grace)
        fill = self.seq.fill_at
        if fill is not None:
            deadline = min(deadline, fill)
        with trio.move_on_at(deadline):
            try:
                batch = [await self.inbox.receive()]
            except trio.EndOfChannel:
                return None
            receive_nowait = self.inbox.receive_nowait
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            return batch
        return []

    async def _apply(self, cmd: RoomCommand) -> None:
        handler = self._handlers[type(cmd)]
        try:
            try:
                await handler(cmd)
            except Forbidden:
                # grants are cached here and a GrantCmd may come after the user's command (or
                # from another node): look again before refusing. Handlers refuse before
                # changing anything, so running one again is safe.
                if not await self._granted_since(cmd):
                    raise
                await handler(cmd)
        except ChatError as error:
            self._fail(cmd, error)
        except Exception:
            log.exception("room %s: command %s failed", self.name, type(cmd).__name__)
            self._fail(cmd, Internal("internal error"))

    def fail_everything(self, error: ChatError) -> None:
        """After a crash: answer every command still owed an answer with `error`, and close
        the joined connections (their membership lived here) so they resume with `join since`.

        Synchronous, and it drains the inbox too (senders blocked on a full inbox included),
        so the registry can close the inbox right after without discarding a queued command.
        """
        owed: list[RoomCommand] = [*self._batch[self._pos:], *self._cmds, *self._committing]
        owed.extend(cmd for cmd, _ in self._after_commit)
        self._batch, self._cmds, self._msgs, self._committing, self._after_commit = [], [], [], [], []
        while True:
            try:
                owed.append(self.inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        for cmd in owed:
            if not isinstance(cmd, DisconnectCmd):
                self._fail(cmd, error)
        for peer in list(self.state.conns.values()):
            peer.close(CloseCode.INTERNAL, "room unavailable, rejoin")

    def _fail(self, cmd: RoomCommand, error: ChatError) -> None:
        reply = getattr(cmd, "reply", None)
        if reply is not None:
            reply.fail(_copy_error(error, getattr(cmd, "ref", None)))
            return
        peer = getattr(cmd, "peer", None)
        if peer is not None:
            peer.send_error(_copy_error(error, getattr(cmd, "ref", None)))

    async def _granted_since(self, cmd: RoomCommand) -> bool:
        """Re-read a private room's grants; True when the command's user may now enter."""
        state = self.state
        user = getattr(cmd, "user", None) or getattr(getattr(cmd, "peer", None), "user", None)
        if user is None or state.info is None or state.info.kind != "private":
            return False
        self._load(await self.deps.store.load_room(self.name))
        return state.can_access(user)

    async def _check_room_cap(self, user: str) -> None:
        """PROTOCOL section 7: a user is a member of at most `max_rooms_per_user` rooms."""
        cap = self.deps.max_rooms_per_user
        if await self.deps.store.count_user_rooms(user) >= cap:
            raise TooLarge(f"{user} is a member of {cap} rooms already (the most allowed); leave one first")

    # -- room lifecycle -------------------------------------------------------------------
    async def _reload(self) -> None:
        """Read the room from the store while it is not known to exist (created elsewhere?)."""
        if not self.state.exists:
            self._load(await self.deps.store.load_room(self.name))

    def _load(self, snapshot: RoomSnapshot | None) -> None:
        """Adopt the store's view of the room. The first time, delivery starts at its head
        (nobody here can have missed what came before), or just below the message this
        actor was spawned for; later, a head beyond what was delivered is read at once."""
        state = self.state
        state.load(snapshot)
        if snapshot is not None:
            head = snapshot.info.last_seq
            if not self._loaded:
                self._loaded = True
                start = head if self._start_below is None else min(head, self._start_below)
                self._deliver(self.seq.start_at(start))
            if head > self.seq.delivered:
                self.seq.note_head(head, trio.current_time(), at_once=True)
        state.last_seq = self.seq.delivered
    async def _create(self, user: str, *, direct_to: str | None = None) -> None:
        """Create the room on first use: public rooms by join/publish, direct rooms by dm."""
        await self._reload()
        if self.state.exists:
            return
        store = self.deps.store
        now = int(time.time() * 1000)
        participants = self.state.participants
        if participants is not None:
            if user not in participants:
                raise Forbidden(f"no access to room {self.name}")
            other = participants[1] if participants[0] == user else participants[0]
            if await store.get_user(other) is None:
                raise NotFound(f"unknown user {other}")
            await self._check_room_cap(user)
            await self._check_room_cap(other)
            await store.ensure_room(self.name, kind="direct", owner=None, ts=now)
        else:
            await store.ensure_room(self.name, kind="public", owner=None, ts=now)
        self._load(await store.load_room(self.name))

    # -- commands -----------------------------------------------------------------------------
    async def _join(self, cmd: JoinCmd) -> None:
        user = cmd.peer.user
        state = self.state
        # before creating anything: a user at the cap must not leave empty rooms behind
        # (direct rooms check both users in _create, and count whether joined or not)
        if not state.is_direct and user not in state.member_users and state.can_access(user):
            await self._check_room_cap(user)
        if not state.exists:
            await self._create(user)
        if self.link is not None and cmd.since is not None and cmd.since > state.last_seq:
            # the client saw messages this node has not delivered yet (it was on a node the
            # bus reached sooner): catch up first, or `joined.seq` would be below `since` and
            # those messages would reach it a second time once they arrive here
            await self._reach_store_head()
        newly_member = user not in state.member_users
        result, online = state.join(cmd.peer, cmd.since)
        self._relay_presence(user)
        if newly_member or self.link is not None:
            # answer after the membership is committed, so the next welcome lists the room
            self._after_commit.append((cmd, partial(cmd.reply.set, result)))
        else:
            cmd.reply.set(result)
        if online is not None:
            self._broadcast(encode_event(online), durable=False, exclude=cmd.peer.id)

    async def _leave(self, cmd: LeaveCmd) -> None:
        offline = self.state.leave(cmd.peer) if self.state.can_access(cmd.peer.user) else None
        left = partial(cmd.peer.send_event, Left(room=self.name, ref=cmd.ref))
        if self.state.has_pending:
            self._after_commit.append((cmd, left))  # the next welcome must not list the room any more
        else:
            left()
        if offline is not None:
            self._broadcast(encode_event(offline), durable=False)
        self._relay_presence(cmd.peer.user)

    async def _publish(self, cmd: PublishCmd) -> None:
        state = self.state
        if not state.exists:
            if cmd.direct_to is not None or cmd.via_http:
                await self._create(cmd.user, direct_to=cmd.direct_to)
        if cmd.via_http:
            if cmd.user != "system":
                state.check_access(cmd.user)
            elif state.is_direct:
                raise Forbidden("direct rooms accept messages from their two users only")
            elif not state.exists:
                raise NotFound(f"room {self.name} does not exist")
        elif cmd.direct_to is None:
            assert cmd.peer is not None
            state.require_joined(cmd.peer)
        self._cmds.append(cmd)
        self._msgs.append(NewMessage(cmd.user, cmd.client_id, cmd.text, cmd.meta, int(time.time() * 1000)))

    async def _typing(self, cmd: TypingCmd) -> None:
        event = self.state.typing(cmd.peer, trio.current_time())
        if event is not None:
            self._broadcast(encode_event(event), durable=False, exclude=cmd.peer.id)
            if self.link is not None:
                self.link.typing(self.name, cmd.peer.user)

    async def _read(self, cmd: ReadCmd) -> None:
        if not self.state.exists:
            await self._reload()
        if self.link is not None and cmd.seq > self.state.last_seq:
            # clamped to the room's last seq, which other nodes may have moved beyond what
            # this node has delivered yet: catch up first (the reader gets those messages
            # before anyone gets the read event)
            await self._reach_store_head()
        event = self.state.read(cmd.peer, cmd.seq)
        if event is not None:
            # relayed once the cursor is committed: whoever sees it and reconnects at once
            # finds the same cursor in welcome
            self._after_commit.append((cmd, partial(self._relay_read, event, cmd.peer.id)))
            if cmd.reply is not None:
                self._after_commit.append((cmd, partial(cmd.reply.set, True)))
        elif cmd.reply is not None:
            cmd.reply.set(False)

    async def _require_readable(self, user: str) -> None:
        """The room exists and `user` may read it (`system`, the API key, reads any room)."""
        if not self.state.exists:
            await self._reload()
        if user != "system":
            self.state.check_access(user)
        elif not self.state.exists:
            raise NotFound(f"room {self.name} does not exist")

    async def _presence(self, cmd: PresenceCmd) -> None:
        await self._require_readable(cmd.user)
        members = self.state.presence()
        if cmd.reply is not None:
            cmd.reply.set(members)
        elif cmd.peer is not None:
            listing = tuple(PresenceMember(user=u, connections=n) for u, n in members)
            cmd.peer.send_event(PresenceList(room=self.name, members=listing, ref=cmd.ref))

    async def _access(self, cmd: AccessCmd) -> None:
        await self._require_readable(cmd.user)
        cmd.reply.set(True)

    async def _disconnect(self, cmd: DisconnectCmd) -> None:
        self.state.disconnect(cmd.peer, trio.current_time())
        self._relay_presence(cmd.peer.user)

    async def _grant(self, cmd: GrantCmd) -> None:
        self.state.grants.add(cmd.user)

    def _relay_read(self, event: ReadEvent, exclude: str) -> None:
        self._broadcast(encode_event(event), durable=False, exclude=exclude)
        if self.link is not None:
            self.link.read(self.name, event.user, event.seq)

    # -- the cluster ---------------------------------------------------------------------------
    def _relay_presence(self, user: str) -> None:
        """Tell the other nodes this node's figure for `user`: joined connections here, 0
        inside the grace period, None once gone from here."""
        if self.link is None:
            return
        state = self.state
        count = state.local_connections(user)
        self.link.presence(self.name, user, count if count or user in state.grace else None)

    async def _remote(self, cmd: RemoteCmd) -> None:
        """Another node's event about this room (best effort: the store stays the truth)."""
        event, state, now = cmd.event, self.state, trio.current_time()
        if isinstance(event, (MessageCommitted, RoomHead)):
            if not self._loaded:
                await self._reload()
                if not self._loaded:
                    return
            if isinstance(event, MessageCommitted):
                self._deliver(self.seq.offer((encode_text_frame(event.event), event.seq, None), now))
            else:
                self.seq.note_head(event.seq, now, at_once=True)
        elif isinstance(event, TypingRelay):
            if state.conns:
                self._broadcast(encode_event(TypingEvent(room=self.name, user=event.user)), durable=False)
        elif isinstance(event, ReadRelay):
            if event.seq > state.cursors.get(event.user, 0):
                state.cursors[event.user] = event.seq
                if state.conns:
                    read = ReadEvent(room=self.name, user=event.user, seq=event.seq)
                    self._broadcast(encode_event(read), durable=False)
        elif isinstance(event, PresenceRelay):
            if self.link is not None and self.link.saw_instance(event.origin):
                count = None if event.status == "offline" else (event.connections or 0)
                change = state.remote_update(event.origin, event.user, count)
                if change is not None:
                    self._broadcast(encode_event(change), durable=False)
        elif isinstance(event, GrantChanged):
            state.grants.add(event.user)

    async def _catch_up(self, cmd: CatchUpCmd) -> None:
        """Events may have been lost: read the head from the store (the gap follows), and
        with `presence`, announce this node's users again and re-read everyone else's."""
        if cmd.reply is not None:
            await self._reach_store_head()
            cmd.reply.set(None)
        else:
            try:
                if not self._loaded:
                    await self._reload()
                else:
                    info = await self.deps.store.get_room(self.name)
                    if info is not None and info.last_seq > self.seq.delivered:
                        self.seq.note_head(info.last_seq, trio.current_time(), at_once=True)
            except ChatError as exc:
                log.warning("room %s: catch-up read failed: %s", self.name, exc)
        link = self.link
        if link is None or not cmd.presence:
            return
        state = self.state
        for user in sorted(set(state.user_conns) | set(state.grace)):
            self._relay_presence(user)
        for change in state.remote_snapshot(await link.presence_snapshot(self.name)):
            self._broadcast(encode_event(change), durable=False)
        if self._loaded:
            since = None if self._unpublished is None else self._unpublished - 1
            self._unpublished = None
            link.head(self.name, self.seq.delivered, state.participants, since)

    async def _reach_store_head(self) -> None:
        """Deliver every message the store holds for this room now, without waiting for the
        bus (a store that does not answer leaves the sequencer's gap for its next fill)."""
        try:
            if not self._loaded:
                await self._reload()
                return
            info = await self.deps.store.get_room(self.name)
        except ChatError as exc:
            log.warning("room %s: head not readable: %s", self.name, exc)
            return
        if info is None or info.last_seq <= self.seq.delivered:
            return
        self.seq.note_head(info.last_seq, trio.current_time(), at_once=True)
        while self.seq.delivered < info.last_seq:
            before = self.seq.delivered
            await self._fill(trio.current_time())
            if self.seq.delivered == before:
                return

    async def _node_gone(self, cmd: NodeGoneCmd) -> None:
        """A node's lease ran out: its users enter the grace period here, and the room reads
        its head from the store, since the node may have committed (and acked) messages
        that it died before publishing."""
        self.state.node_gone(cmd.instance, trio.current_time())
        await self._catch_up(CatchUpCmd(presence=False))

    async def _fill(self, now: float) -> None:
        """Read the sequencer's gap from the store and deliver it."""
        gap = self.seq.gap(now)
        if gap is None:
            return
        after, upto = gap
        try:
            rows = await self.deps.store.messages_between(self.name, after, upto, FILL_PAGE)
        except ChatError as exc:
            log.warning("room %s: gap (%d, %d] not readable yet: %s", self.name, after, upto, exc)
            self.seq.fill_at = trio.current_time() + FILL_RETRY_S
            return
        items: list[tuple[bytes, int, Peer | None]] = [
            (encode_text_frame(message_json(message_from_stored(row))), row.seq, None) for row in rows
        ]
        complete = len(rows) < FILL_PAGE or rows[-1].seq >= upto
        metrics = self.deps.metrics
        metrics.gap_fills.inc()
        metrics.messages_filled.inc(len(items))
        self._deliver(self.seq.filled(items, trio.current_time(), complete=complete))

    def _deliver(self, ready: list[tuple[bytes, int, Peer | None]]) -> None:
        if ready:
            self._fan_out(ready)
        self.state.last_seq = self.seq.delivered

    # -- commit and fan-out ---------------------------------------------------------------------
    async def _flush(self) -> None:
        """Commit this drain's publishes and membership changes in one batch, then ack and fan out."""
        if not self._msgs and not self.state.has_pending and not self._after_commit:
            return
        cmds, msgs = self._cmds, self._msgs
        self._cmds, self._msgs = [], []
        deferred, self._after_commit = self._after_commit, []
        try:
            await self._commit(cmds, msgs)
        finally:
            for _, answer in deferred:
                answer()

    async def _commit(self, cmds: list[PublishCmd], msgs: list[NewMessage]) -> None:
        state = self.state
        joins, leaves, cursors = state.take_pending()
        if not state.exists:
            for cmd in cmds:
                self._fail(cmd, NotFound(f"room {self.name} does not exist"))
            return
        batch = RoomBatch(room=self.name, messages=tuple(msgs), joins=joins, leaves=leaves, cursors=cursors)
        metrics = self.deps.metrics
        started = time.perf_counter()
        self._committing = cmds
        try:
            results = await self.deps.store.commit(batch)
        except Exception as exc:
            self._committing = []
            if not isinstance(exc, ChatError):
                log.exception("room %s: commit failed", self.name)
            else:
                log.warning("room %s: commit failed: %s", self.name, exc)
            state.restore_pending(joins, leaves, cursors)
            failure = Unavailable("store unavailable: the message was not stored, retry")
            for cmd in cmds:
                self._fail(cmd, failure)
            return
        metrics.observe_batch(len(msgs), time.perf_counter() - started)
        state.committed((m.sender, r.seq) for m, r in zip(msgs, results) if not r.duplicate)
        fresh: list[tuple[bytes, int, Peer | None]] = []
        stored = 0
        delivered, link, participants = self.seq.delivered, self.link, state.participants
        for cmd, msg, res in zip(cmds, msgs, results):
            # a duplicate beyond what was delivered is a retry whose first commit landed but
            # was never fanned out (the ack was lost with a store error): deliver it now
            if not res.duplicate or res.seq > delivered:
                event = Message(
                    room=self.name, seq=res.seq, id=msg.client_id, sender=msg.sender,
                    text=msg.text, meta=msg.meta, ts=res.ts,
                )
                payload = message_json(event)
                fresh.append((encode_text_frame(payload), res.seq, cmd.peer))
                if not res.duplicate:
                    stored += 1
                    if link is not None and not link.message(self.name, res.seq, payload, participants) \
                            and self._unpublished is None:
                        self._unpublished = res.seq
            if cmd.reply is not None:
                cmd.reply.set(PublishResult(seq=res.seq, ts=res.ts, duplicate=res.duplicate))
            elif cmd.peer is not None:
                cmd.peer.send_event(Ack(id=msg.client_id, room=self.name, seq=res.seq, ts=res.ts, ref=cmd.ref))
        self._committing = []
        if fresh:
            self._deliver(self.seq.offer_batch(fresh, trio.current_time()))
        else:
            state.last_seq = self.seq.delivered
        metrics.messages_in.inc(stored)

    def _fan_out(self, fresh: list[tuple[bytes, int, Peer | None]]) -> None:
        """Hand this drain's new message frames to every recipient, as one write per recipient.

        The frames are joined once; a recipient that sent none of them gets that blob (one
        syscall however many messages the drain held, so a busy room costs fewer writes per
        message as its batches grow), a sending connection gets the others' frames only
        (echo filtering). Iterates the live dicts without copying: delivering never changes
        membership (an evicted connection leaves through its own task, later).
        """
        room = self.name
        participants = self.state.participants
        if participants is None:
            groups: tuple[Iterable[Peer], ...] = (self.state.conns.values(),)
        else:
            connections_of = self.deps.sessions.connections_of
            groups = (connections_of(participants[0]), connections_of(participants[1]))
        items = [(frame, seq) for frame, seq, _ in fresh]
        blob = items[0][0] if len(items) == 1 else b"".join(frame for frame, _ in items)
        senders = {peer for _, _, peer in fresh if peer is not None}
        size = len(items)
        count = 0
        for group in groups:
            for peer in group:
                if peer in senders:
                    own = [(frame, seq) for frame, seq, sender in fresh if sender is not peer]
                    if own:
                        peer.deliver_messages(room, own, b"".join(frame for frame, _ in own))
                        count += len(own)
                else:
                    peer.deliver_messages(room, items, blob)
                    count += size
        self.deps.metrics.deliveries_out.inc(count)

    def _broadcast(self, payload: bytes, *, durable: bool, exclude: str | None = None) -> None:
        """One ephemeral/durable event to every joined connection (minus `exclude`)."""
        frame = encode_text_frame(payload)
        count = 0
        for peer in self.state.conns.values():
            if peer.id != exclude:
                peer.deliver(frame, durable)
                count += 1
        self.deps.metrics.deliveries_out.inc(count)
