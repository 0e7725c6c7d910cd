"""Property test of RoomState: joins, leaves, sends, retries, drops and `join since` reconnects.

The durable log is the contract's model of the store (seq = position, dedup on sender + id);
the real stores are held to the same contract by tests/store. Invariants: every connection
sees a gap-free, duplicate-free run of seqs from the point it joined (or replayed from), every
acked message is in the log exactly once, and presence matches the joined connections.
"""

from __future__ import annotations

import itertools

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chat_actors.errors import NotJoined
from chat_actors.room_state import MAX_REPLAY, RoomState
from chat_actors.store import RoomInfo, RoomSnapshot

USERS = ("alice", "bob", "carol")
_ids = itertools.count()


@attrs.define(eq=False)
class FakePeer:
    user: str
    id: str = attrs.field(factory=lambda: f"c{next(_ids)}")
    seen: list[int] = attrs.field(factory=list)

    def deliver(self, frame: bytes, durable: bool) -> bool:
        return True

    def deliver_messages(self, room: str, items: list[tuple[bytes, int]], blob: bytes) -> None:
        self.seen.extend(seq for _, seq in items)


def snapshot() -> RoomSnapshot:
    info = RoomInfo(name="general", kind="public", owner=None, last_seq=0, created_ts=0)
    return RoomSnapshot(info=info, grants=frozenset(), members=frozenset(), cursors={})


class RoomMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = RoomState("general", grace_s=5.0)
        self.state.load(snapshot())
        self.log: list[tuple[str, str]] = []  # index + 1 = seq
        self.by_key: dict[tuple[str, str], int] = {}
        self.acked: dict[tuple[str, str], int] = {}
        self.conns: list[FakePeer] = []
        self.first_seen: dict[str, int] = {}
        self.clock = 0.0

    # -- helpers ---------------------------------------------------------------------------------
    def _commit(self, sender: str, client_id: str) -> tuple[int, bool]:
        key = (sender, client_id)
        if key in self.by_key:
            return self.by_key[key], True
        self.log.append(key)
        seq = len(self.log)
        self.by_key[key] = seq
        return seq, False

    def _join(self, peer: FakePeer, since: int | None) -> None:
        result, _ = self.state.join(peer, since)
        assert result.seq == len(self.log)
        if since is not None:
            assert result.recovered == (len(self.log) - since <= MAX_REPLAY)
            if result.recovered:
                peer.seen.extend(range(since + 1, result.seq + 1))
        self.first_seen[peer.id] = (since if since is not None and result.recovered else result.seq)
        if peer not in self.conns:
            self.conns.append(peer)

    # -- rules ----------------------------------------------------------------------------------
    @rule(user=st.sampled_from(USERS))
    def connect_and_join(self, user: str) -> None:
        self._join(FakePeer(user), None)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), client_id=st.sampled_from(["a", "b", "c", "d", "e", "f"]))
    def send(self, data: st.DataObject, client_id: str) -> None:
        peer = data.draw(st.sampled_from(self.conns))
        self.state.require_joined(peer)
        seq, duplicate = self._commit(peer.user, client_id)
        if not duplicate:
            self.state.committed([(peer.user, seq)])
            for other in self.state.conns.values():
                if other is not peer:
                    other.deliver_messages("general", [(b"", seq)], b"")
            peer.seen.append(seq)  # the sender learns its seq from the ack, never from an echo
        key = (peer.user, client_id)
        if key in self.acked:
            assert self.acked[key] == seq  # a retry gets the original ack
        self.acked[key] = seq

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(self.conns))
        self.state.leave(peer)
        self.conns.remove(peer)

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def drop_and_reconnect_since(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(self.conns))
        self.state.disconnect(peer, self.clock)
        self.conns.remove(peer)
        last = peer.seen[-1] if peer.seen else self.first_seen[peer.id]
        self._join(FakePeer(peer.user), last)

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def send_without_join_is_refused(self, data: st.DataObject) -> None:
        stranger = FakePeer(data.draw(st.sampled_from(USERS)))
        try:
            self.state.require_joined(stranger)
        except NotJoined:
            return
        raise AssertionError("a connection that never joined was allowed to send")

    @rule(seconds=st.floats(min_value=0.0, max_value=6.0))
    def time_passes(self, seconds: float) -> None:
        self.clock += seconds
        for event in self.state.expire(self.clock)[0]:
            assert event.user not in self.state.user_conns

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def gap_free_in_order(self) -> None:
        for peer in self.conns:
            start = self.first_seen[peer.id]
            assert peer.seen == list(range(start + 1, len(self.log) + 1)), (
                f"{peer.id} saw {peer.seen}, expected {start + 1}..{len(self.log)}"
            )

    @invariant()
    def acked_are_durable_once(self) -> None:
        for key, seq in self.acked.items():
            assert self.log[seq - 1] == key
        assert len(set(self.log)) == len(self.log)
        assert self.state.last_seq == len(self.log)

    @invariant()
    def presence_matches_connections(self) -> None:
        joined_users = {p.user for p in self.conns}
        assert set(self.state.user_conns) == joined_users
        present = set(self.state.present_users())
        assert joined_users <= present
        assert present - joined_users <= set(self.state.grace)


RoomMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRoomState = RoomMachine.TestCase
