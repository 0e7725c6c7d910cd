"""RoomState: the pure state of one room and its transitions, with no I/O and no trio.

The room actor (`room.py`) is the only owner of a RoomState, so nothing here needs a lock.
Keeping the transitions pure lets the property tests drive them directly, and keeps the actor
loop a thin shell that does the awaiting (store, replies) around them.

Membership has two layers: *joined connections* (who receives live events now, per
connection) and *persisted members* (users who joined and did not leave; listed in `welcome`).
Presence is per user and derived from joined connections plus the grace period. In a
cluster, `remote` adds what the other nodes announced (per node instance: that user's joined
connections there), so a user is present while any node has them, and `joined.members`,
`presence_list` and the online/offline events speak for the whole cluster.
"""

from __future__ import annotations

from typing import Iterable

from .commands import JoinResult, Peer
from .errors import Forbidden, NotFound, NotJoined
from .protocol import parse_dm_room
from .records import PresenceEvent, ReadEvent, TypingEvent
from .store import RoomInfo, RoomSnapshot

#: Leading-edge typing throttle per connection (PROTOCOL section 5).
TYPING_INTERVAL_S = 2.0
#: A join whose `since` misses more than this many messages is not replayed.
MAX_REPLAY = 1000


class RoomState:
    """Members, presence, sequence and cursors of one room."""

    def __init__(self, name: str, *, grace_s: float) -> None:
        self.name = name
        self.grace_s = grace_s
        self.participants: tuple[str, str] | None = parse_dm_room(name)
        self.info: RoomInfo | None = None
        self.grants: set[str] = set()
        self.member_users: set[str] = set()
        self.cursors: dict[str, int] = {}
        self.last_seq = 0
        #: joined connections by connection id, in join order (the fan-out list)
        self.conns: dict[str, Peer] = {}
        #: user -> ids of that user's joined connections
        self.user_conns: dict[str, set[str]] = {}
        #: user -> monotonic deadline of the presence grace period after a drop
        self.grace: dict[str, float] = {}
        self.typing_at: dict[str, float] = {}
        #: user -> {node instance: that user's joined connections there (0: in its grace)}
        self.remote: dict[str, dict[str, int]] = {}
        #: cluster mode: every join and leave is written, since another node may have changed
        #: the membership since this actor loaded it (its `member_users` is only a hint)
        self.persist_always = False
        # persistence not yet committed (flushed with the next batch)
        self.pending_joins: set[str] = set()
        self.pending_leaves: set[str] = set()
        self.pending_cursors: dict[str, int] = {}

    # -- loading --------------------------------------------------------------------------
    def load(self, snapshot: RoomSnapshot | None) -> None:
        """Adopt what the store knows; keeps live connections (reloads happen on creation)."""
        if snapshot is None:
            return
        self.info = snapshot.info
        self.grants = set(snapshot.grants)
        self.member_users = set(snapshot.members) | self.pending_joins
        self.member_users -= self.pending_leaves
        merged = dict(snapshot.cursors)
        for user, seq in self.cursors.items():
            merged[user] = max(seq, merged.get(user, 0))
        self.cursors = merged
        self.last_seq = max(self.last_seq, snapshot.info.last_seq)

    @property
    def exists(self) -> bool:
        return self.info is not None

    @property
    def is_direct(self) -> bool:
        return self.participants is not None

    # -- access -----------------------------------------------------------------------------
    def can_access(self, user: str) -> bool:
        """Public rooms: anyone; private: the owner and granted users; direct: the two users."""
        if self.participants is not None:
            return user in self.participants
        if self.info is None or self.info.kind != "private":
            return True
        return user == self.info.owner or user in self.grants

    def check_access(self, user: str) -> None:
        if not self.can_access(user):
            raise Forbidden(f"no access to room {self.name}")
        if self.info is None:
            raise NotFound(f"room {self.name} does not exist")

    def require_joined(self, peer: Peer) -> None:
        if not self.can_access(peer.user):
            raise Forbidden(f"no access to room {self.name}")
        if peer.id not in self.conns:
            raise NotJoined(f"join room {self.name} first")

    # -- presence ---------------------------------------------------------------------------
    def is_present_here(self, user: str) -> bool:
        return user in self.user_conns or user in self.grace

    def is_present(self, user: str) -> bool:
        return user in self.user_conns or user in self.grace or user in self.remote

    def present_users(self) -> tuple[str, ...]:
        users = set(self.user_conns)
        users.update(self.grace)
        users.update(self.remote)
        return tuple(sorted(users))

    def local_connections(self, user: str) -> int:
        return len(self.user_conns.get(user, ()))

    def presence(self) -> tuple[tuple[str, int], ...]:
        """(user, joined connections) for every present user, all nodes counted; 0 while
        inside the grace period."""
        remote = self.remote
        return tuple(
            (u, len(self.user_conns.get(u, ())) + sum(remote.get(u, {}).values()))
            for u in self.present_users()
        )

    def remote_update(self, instance: str, user: str, connections: int | None) -> PresenceEvent | None:
        """Another node's view of `user` here: `connections` joined there (0: in its grace
        period), None: gone from that node. Returns the cluster-wide change, if any."""
        before = self.is_present(user)
        nodes = self.remote.get(user)
        if connections is None:
            if nodes is not None:
                nodes.pop(instance, None)
                if not nodes:
                    del self.remote[user]
        else:
            self.remote.setdefault(user, {})[instance] = connections
        return self._change(user, before)

    def remote_snapshot(self, entries: dict[str, dict[str, int]]) -> list[PresenceEvent]:
        """Adopt the cluster's presence view (a snapshot read), announcing what changed."""
        users = set(self.remote) | set(entries)
        before = {u: self.is_present(u) for u in users}
        self.remote = {u: dict(nodes) for u, nodes in entries.items() if nodes}
        return [e for u in sorted(users) if (e := self._change(u, before[u])) is not None]

    def node_gone(self, instance: str, now: float) -> None:
        """A node's lease ran out: its users here stay present for the grace period, then go
        offline unless some node has them again (PROTOCOL section 9)."""
        for user in [u for u, nodes in self.remote.items() if instance in nodes]:
            nodes = self.remote[user]
            del nodes[instance]
            if not nodes:
                del self.remote[user]
                if not self.is_present(user):
                    self.grace[user] = now + self.grace_s

    def _change(self, user: str, before: bool) -> PresenceEvent | None:
        after = self.is_present(user)
        if before == after:
            return None
        return PresenceEvent(room=self.name, user=user, status="online" if after else "offline")

    def next_deadline(self) -> float | None:
        return min(self.grace.values()) if self.grace else None

    def expire(self, now: float) -> tuple[list[PresenceEvent], list[str]]:
        """End grace periods that ran out: (offline events for the users gone cluster-wide,
        every user gone from this node)."""
        gone = [u for u, deadline in self.grace.items() if deadline <= now]
        for user in gone:
            del self.grace[user]
        events = [PresenceEvent(room=self.name, user=u, status="offline") for u in gone if u not in self.remote]
        return events, gone

    # -- transitions --------------------------------------------------------------------------
    def join(self, peer: Peer, since: int | None) -> tuple[JoinResult, PresenceEvent | None]:
        """Join one connection; returns the join answer and an `online` event if it is news."""
        self.check_access(peer.user)
        announce = not self.is_present(peer.user)
        self.grace.pop(peer.user, None)
        self.conns[peer.id] = peer
        self.user_conns.setdefault(peer.user, set()).add(peer.id)
        if peer.user not in self.member_users or self.persist_always:
            self.member_users.add(peer.user)
            self.pending_joins.add(peer.user)
            self.pending_leaves.discard(peer.user)
        recovered = since is None or self.last_seq - since <= MAX_REPLAY
        result = JoinResult(seq=self.last_seq, members=self.present_users(), recovered=recovered)
        event = PresenceEvent(room=self.name, user=peer.user, status="online") if announce else None
        return result, event

    def _drop_conn(self, peer: Peer) -> bool:
        """Remove a joined connection; True when it was the user's last one here."""
        if self.conns.pop(peer.id, None) is None:
            return False
        self.typing_at.pop(peer.id, None)
        ids = self.user_conns.get(peer.user)
        if ids is None:
            return False
        ids.discard(peer.id)
        if ids:
            return False
        del self.user_conns[peer.user]
        return True

    def leave(self, peer: Peer) -> PresenceEvent | None:
        """Explicit leave: ends the user's membership; `offline` at once if it was the last."""
        last = self._drop_conn(peer)
        if peer.user in self.member_users or self.persist_always:
            self.member_users.discard(peer.user)
            self.pending_leaves.add(peer.user)
            self.pending_joins.discard(peer.user)
        if last:
            self.grace.pop(peer.user, None)
            if peer.user not in self.remote:
                return PresenceEvent(room=self.name, user=peer.user, status="offline")
        return None

    def disconnect(self, peer: Peer, now: float) -> None:
        """A dropped connection: the user stays present for the grace period."""
        if self._drop_conn(peer):
            self.grace[peer.user] = now + self.grace_s

    def typing(self, peer: Peer, now: float) -> TypingEvent | None:
        """Leading-edge throttle: relay the first, then nothing from this connection for 2 s."""
        self.require_joined(peer)
        last = self.typing_at.get(peer.id)
        if last is not None and now - last < TYPING_INTERVAL_S:
            return None
        self.typing_at[peer.id] = now
        return TypingEvent(room=self.name, user=peer.user)

    def read(self, peer: Peer, seq: int) -> ReadEvent | None:
        """Move the user's cursor forward (clamped to the last seq); None when not forward."""
        if self.participants is not None and peer.user in self.participants:
            if self.info is None:
                raise NotFound(f"room {self.name} does not exist")
        else:
            self.require_joined(peer)
        seq = min(seq, self.last_seq)
        if seq <= self.cursors.get(peer.user, 0):
            return None
        self.cursors[peer.user] = seq
        self.pending_cursors[peer.user] = seq
        return ReadEvent(room=self.name, user=peer.user, seq=seq)

    def committed(self, stored: Iterable[tuple[str, int]]) -> None:
        """Record messages the store accepted: (sender, seq) in seq order."""
        for sender, seq in stored:
            if seq > self.last_seq:
                self.last_seq = seq
            if seq > self.cursors.get(sender, 0):
                self.cursors[sender] = seq

    def take_pending(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, int], ...]]:
        """Hand the uncommitted membership/cursor changes to the next batch."""
        joins, leaves = tuple(sorted(self.pending_joins)), tuple(sorted(self.pending_leaves))
        cursors = tuple(sorted(self.pending_cursors.items()))
        self.pending_joins, self.pending_leaves, self.pending_cursors = set(), set(), {}
        return joins, leaves, cursors

    def restore_pending(self, joins: Iterable[str], leaves: Iterable[str], cursors: Iterable[tuple[str, int]]) -> None:
        """Put back changes whose batch failed, unless newer changes superseded them."""
        for user in joins:
            if user in self.member_users and user not in self.pending_leaves:
                self.pending_joins.add(user)
        for user in leaves:
            if user not in self.member_users and user not in self.pending_joins:
                self.pending_leaves.add(user)
        for user, seq in cursors:
            if seq > self.pending_cursors.get(user, 0):
                self.pending_cursors[user] = seq

    @property
    def has_pending(self) -> bool:
        return bool(self.pending_joins or self.pending_leaves or self.pending_cursors)

    def idle(self) -> bool:
        """Nothing live depends on this actor: it may retire."""
        return not self.conns and not self.grace and not self.has_pending
