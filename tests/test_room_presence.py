"""RoomState's cluster presence, without a cluster: what other nodes announce (`remote`)
combines with this node's connections into one online/offline per user."""

from __future__ import annotations

import attrs

from chat_actors.room_state import RoomState
from chat_actors.store import RoomInfo, RoomSnapshot


@attrs.define(eq=False)
class Peer:
    user: str
    id: str

    def deliver(self, frame: bytes, durable: bool) -> bool:
        return True


def room() -> RoomState:
    state = RoomState("general", grace_s=5.0)
    info = RoomInfo(name="general", kind="public", owner=None, last_seq=0, created_ts=0)
    state.load(RoomSnapshot(info=info, grants=frozenset(), members=frozenset(), cursors={}))
    return state


def statuses(events) -> list[tuple[str, str]]:
    return [(e.user, e.status) for e in events if e is not None]


def test_a_user_on_two_nodes_is_online_once_and_offline_when_the_last_goes() -> None:
    state = room()
    alice = Peer("alice", "c1")
    assert statuses([state.remote_update("n2", "alice", 1)]) == [("alice", "online")]
    result, online = state.join(alice, None)
    assert online is None and result.members == ("alice",)
    assert state.presence() == (("alice", 2),)             # one here, one on n2
    assert state.leave(alice) is None                       # still on n2
    assert statuses([state.remote_update("n2", "alice", None)]) == [("alice", "offline")]
    assert state.presence() == ()


def test_the_last_local_connection_waits_for_the_other_node() -> None:
    state = room()
    bob = Peer("bob", "c2")
    state.join(bob, None)
    assert state.remote_update("n3", "bob", 0) is None      # in n3's grace period: present
    state.disconnect(bob, now=10.0)
    events, gone = state.expire(15.0)
    assert gone == ["bob"] and events == []                 # gone from here, not from n3
    assert state.is_present("bob")


def test_a_snapshot_announces_only_the_differences() -> None:
    state = room()
    state.remote_update("n2", "carol", 1)
    changes = state.remote_snapshot({"dave": {"n2": 2}, "carol": {"n4": 1}})
    assert statuses(changes) == [("dave", "online")]        # carol stays present (now via n4)
    assert state.presence() == (("carol", 1), ("dave", 2))
    assert statuses(state.remote_snapshot({})) == [("carol", "offline"), ("dave", "offline")]


def test_a_dead_node_s_users_leave_after_the_grace_period() -> None:
    state = room()
    state.remote_update("n2", "erin", 1)
    state.remote_update("n2", "fay", 1)
    state.remote_update("n5", "fay", 1)                     # fay is on a live node too
    state.node_gone("n2", now=100.0)
    assert state.is_present("erin")                         # inside the grace period
    events, _ = state.expire(104.0)
    assert events == []
    events, _ = state.expire(105.0)
    assert statuses(events) == [("erin", "offline")]
    assert state.is_present("fay")
