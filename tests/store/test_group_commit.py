"""Group commit: concurrent room batches share transactions without changing any outcome."""

from __future__ import annotations

import itertools
import pathlib
import random
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from chat_actors import errors
from chat_actors.store import AppendResult, NewMessage, RoomBatch
from chat_actors.store.group_commit import GroupCommitter
from chat_actors.store.sqlite import SqliteStore


def msg(sender: str, client_id: str, text: str = "hi", ts: int = 1000) -> NewMessage:
    return NewMessage(sender, client_id, text, None, ts)


def raw(path: pathlib.Path) -> sqlite3.Connection:
    """An independent connection, as an operator's sqlite3 shell would be."""
    return sqlite3.connect(path, isolation_level=None)


def batch(room: str, *client_ids: str, **changes: tuple) -> RoomBatch:
    return RoomBatch(room, tuple(msg("alice", c) for c in client_ids), **changes)


async def open_with_rooms(db: pathlib.Path, *rooms: str) -> SqliteStore:
    store = await SqliteStore.open(str(db))
    for room in rooms:
        await store.create_room(room, kind="public", owner=None, ts=1)
    return store


async def test_concurrent_rooms_are_grouped_and_keep_their_order(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    rooms, batches, size = 50, 5, 3
    names = [f"room{r}" for r in range(rooms)]
    store = await open_with_rooms(db, *names)
    groups_before = store.commit_groups
    got: dict[str, list[AppendResult]] = {name: [] for name in names}

    async def room_actor(name: str) -> None:
        for b in range(batches):  # like a room actor: one commit at a time
            got[name] += await store.commit(batch(name, *(f"{b}-{i}" for i in range(size))))

    async def other_writes() -> None:  # ordinary writes share the writer connection meanwhile
        for i in range(20):
            await store.create_user(f"user{i}", "h", i)
            await trio.lowlevel.checkpoint()

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(room_actor, name)
                nursery.start_soon(other_writes)
        for name in names:
            assert [(r.seq, r.duplicate) for r in got[name]] == [(s, False) for s in range(1, batches * size + 1)]
            page, more = await store.history(name, before=None, after=None, limit=100)
            assert [m.seq for m in page] == list(range(1, batches * size + 1)) and not more
            assert [m.client_id for m in page] == [f"{b}-{i}" for b in range(batches) for i in range(size)]
            assert (await store.get_room(name)).last_seq == batches * size
        assert all([await store.get_user(f"user{i}") for i in range(20)])
        groups = store.commit_groups - groups_before
        assert 0 < groups < rooms * batches  # shared transactions, not one per batch
    finally:
        await store.aclose()
    assert raw(db).execute("SELECT count(*) FROM messages").fetchone()[0] == rooms * batches * size


async def test_a_failing_batch_does_not_fail_its_group(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    store = await open_with_rooms(db, "first", "a", "b", "gone", "boom")
    raw(db).execute("DELETE FROM rooms WHERE name = 'gone'")  # vanished underneath the store
    raw(db).execute(  # fails the batch at its last step, after its messages were inserted
        "CREATE TRIGGER fail_join BEFORE INSERT ON members WHEN NEW.username = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    outcomes: dict[str, object] = {}

    async def commit(one: RoomBatch) -> None:
        try:
            outcomes[one.room] = await store.commit(one)
        except errors.ChatError as exc:
            outcomes[one.room] = exc

    blocker = raw(db)
    blocker.execute("BEGIN IMMEDIATE")  # holds the first commit in its worker thread
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, batch("first", "f1"))
            await trio.testing.wait_all_tasks_blocked()
            groups_before = store.commit_groups
            nursery.start_soon(commit, batch("a", "a1", "a2"))
            nursery.start_soon(commit, batch("gone", "g1"))
            nursery.start_soon(commit, batch("boom", "x1", "x2", joins=("boom",)))
            nursery.start_soon(commit, batch("b", "b1"))
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        assert store.commit_groups - groups_before == 2  # "first", then the other four together
        assert [r.seq for r in outcomes["first"]] == [1]
        assert [r.seq for r in outcomes["a"]] == [1, 2]
        assert [r.seq for r in outcomes["b"]] == [1]
        assert isinstance(outcomes["gone"], errors.NotFound)
        assert isinstance(outcomes["boom"], errors.Unavailable)
        # The failed batch left nothing behind, the others are all there.
        rows = raw(db).execute("SELECT client_id FROM messages ORDER BY client_id").fetchall()
        assert [c for (c,) in rows] == ["a1", "a2", "b1", "f1"]
        assert (await store.get_room("boom")).last_seq == 0
        raw(db).execute("DROP TRIGGER fail_join")
        assert [r.seq for r in await store.commit(batch("boom", "x1", "x2", joins=("boom",)))] == [1, 2]
    finally:
        await store.aclose()


async def test_cancelled_follower_does_not_stall_the_queue(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    store = await open_with_rooms(db, "a", "b", "c")
    returned: dict[str, list[AppendResult]] = {}

    async def commit(room: str, client_id: str) -> None:
        returned[room] = await store.commit(batch(room, client_id))

    blocker = raw(db)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit, "a", "a1")  # leads, stuck in its thread
                await trio.testing.wait_all_tasks_blocked()
                with trio.CancelScope() as follower:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(commit, "b", "b1")  # the oldest follower: next leader
                        await trio.testing.wait_all_tasks_blocked()
                        nursery.start_soon(commit, "c", "c1")
                        await trio.testing.wait_all_tasks_blocked()
                        follower.cancel()
                assert follower.cancelled_caught
                blocker.execute("COMMIT")
        assert [r.seq for r in returned["a"]] == [1] and [r.seq for r in returned["c"]] == [1]
        assert "b" not in returned
        assert raw(db).execute("SELECT count(*) FROM messages WHERE client_id = 'b1'").fetchone()[0] == 0
        with trio.fail_after(10):  # the queue still moves
            assert [r.seq for r in await store.commit(batch("b", "b2"))] == [1]
    finally:
        await store.aclose()
    with pytest.raises(errors.Unavailable, match="closed"):
        await store.commit(batch("a", "a2"))


async def test_waiting_commits_fail_when_the_store_closes(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "chat.db"
    store = await open_with_rooms(db, "a", "b", "c")
    outcomes: dict[str, object] = {}

    async def commit(room: str, client_id: str) -> None:
        try:
            outcomes[room] = await store.commit(batch(room, client_id))
        except errors.Unavailable as exc:
            outcomes[room] = exc

    blocker = raw(db)
    blocker.execute("BEGIN IMMEDIATE")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, "a", "a1")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(commit, "b", "b1")
            nursery.start_soon(commit, "c", "c1")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.aclose)  # queues behind the running group
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
    assert [r.seq for r in outcomes["a"]] == [1]  # the in-flight group finished
    for room in ("b", "c"):
        assert isinstance(outcomes[room], errors.Unavailable) and "closed" in str(outcomes[room])
    assert raw(db).execute("SELECT client_id FROM messages").fetchall() == [("a1",)]


class _Gated:
    """A ``run_group`` that records its groups and holds each one until the test lets it go."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gates: list[threading.Event] = []

    def __call__(self, items: list[str]) -> list[str | Exception]:
        gate = threading.Event()
        self.gates.append(gate)
        self.groups.append(items)
        gate.wait(10)
        return [f"ok {item}" for item in items]

    async def running(self, count: int) -> None:
        """Wait until ``count`` groups have started and every task is parked."""
        with trio.fail_after(10):
            while len(self.groups) < count:
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()


async def test_cancelled_member_of_a_running_group_is_still_written() -> None:
    run = _Gated()
    committer: GroupCommitter[str, str] = GroupCommitter(run)
    got: dict[str, str] = {}

    async def commit(item: str) -> None:
        got[item] = await committer.commit(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit, "first")
        await run.running(1)
        with trio.CancelScope() as member:
            async with trio.open_nursery() as inner:
                nursery.start_soon(commit, "lead")  # the oldest follower leads the next group
                await trio.testing.wait_all_tasks_blocked()
                inner.start_soon(commit, "member")
                await trio.testing.wait_all_tasks_blocked()
                run.gates[0].set()
                await run.running(2)
                member.cancel()  # its group is already in the thread
        assert member.cancelled_caught
        run.gates[1].set()
    assert run.groups == [["first"], ["lead", "member"]]  # written, only the outcome is dropped
    assert got == {"first": "ok first", "lead": "ok lead"}
    async with trio.open_nursery() as nursery:  # and the queue still moves
        nursery.start_soon(commit, "later")
        await run.running(3)
        run.gates[2].set()
    assert got["later"] == "ok later"


async def test_cancelled_follower_promoted_to_lead_still_leads() -> None:
    """The window between a follower's cancellation and its wake-up: it was made leader."""
    follower = trio.CancelScope()

    class CancelsOnRead(list[str]):  # read by the leader's task right before it passes the lead on
        def __iter__(self) -> Iterator[str]:
            follower.cancel()
            return super().__iter__()

    groups: list[list[str]] = []
    gate = threading.Event()

    def run_group(items: list[str]) -> list[str | Exception]:
        groups.append(items)
        if items == ["first"]:
            gate.wait(10)
            return CancelsOnRead(["ok first"])
        return [f"ok {item}" for item in items]

    committer: GroupCommitter[str, str] = GroupCommitter(run_group)
    got: dict[str, str] = {}

    async def commit(item: str) -> None:
        got[item] = await committer.commit(item)

    async def cancellable(item: str) -> None:
        with follower:
            await commit(item)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(cancellable, "next")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(commit, "after")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    assert follower.cancelled_caught and "next" not in got
    assert groups == [["first"], ["next", "after"]]  # it led the group before letting go
    assert got == {"first": "ok first", "after": "ok after"}
    assert await committer.commit("last") == "ok last"


async def test_group_committer_under_random_cancellation() -> None:
    """Whatever is cancelled when, every item runs at most once and nobody waits forever."""
    ran: list[int] = []

    def run_group(items: list[int]) -> list[int | Exception]:
        time.sleep(0.0005)  # a transaction's worth of time, for groups to form behind it
        ran.extend(items)
        return [ValueError(i) if i % 7 == 0 else i * 10 for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(run_group, limiter=trio.CapacityLimiter(1))
    returned: dict[int, int] = {}
    failed: set[int] = set()
    cancelled: set[int] = set()
    rng = random.Random(1234)
    ids = itertools.count(1)

    async def room(commits: int) -> None:
        for _ in range(commits):
            i = next(ids)
            with trio.CancelScope() as scope:
                if rng.random() < 0.4:
                    scope.deadline = trio.current_time() + rng.uniform(0, 0.002)
                try:
                    returned[i] = await committer.commit(i)
                except ValueError:
                    failed.add(i)
            if scope.cancelled_caught:
                cancelled.add(i)
            await trio.sleep(rng.uniform(0, 0.001))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(room, 30)
        assert await committer.commit(-1) == -10  # still moving afterwards
    ran.remove(-1)
    assert len(ran) == len(set(ran))  # nothing ran twice
    assert returned == {i: i * 10 for i in returned} and all(i % 7 == 0 for i in failed)
    assert set(returned) | failed <= set(ran)
    assert set(range(1, 3001)) - cancelled == set(returned) | failed  # only a cancel loses an outcome
    assert committer.groups < committer.items
