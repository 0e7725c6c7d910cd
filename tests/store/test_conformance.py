"""The ``Store`` contract, run against every backend in conftest.BACKENDS."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_actors import errors
from chat_actors.store import (
    AppendResult,
    NewMessage,
    RoomBatch,
    RoomInfo,
    RoomListing,
    Store,
    StoredMessage,
    UserRecord,
    UserRoom,
    open_store,
)

_ids = itertools.count()


def msg(
    sender: str, client_id: str, text: str = "hello", meta: dict | None = None, ts: int = 1000
) -> NewMessage:
    return NewMessage(sender, client_id, text, meta, ts)


async def fill(store: Store, room: str, n: int, *, sender: str = "alice", batch: int = 7) -> None:
    """Store n messages text "m<seq>" in batches of ``batch``."""
    seqs = list(range(1, n + 1))
    for start in range(0, n, batch):
        chunk = seqs[start : start + batch]
        await store.commit(RoomBatch(room, tuple(msg(sender, f"c{s}", f"m{s}", ts=s) for s in chunk)))


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


async def test_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)


# --- users ---------------------------------------------------------------------------------


async def test_users(store: Store) -> None:
    assert await store.get_user("alice") is None
    await store.create_user("alice", "hash-a", 11)
    assert await store.get_user("alice") == UserRecord("alice", "hash-a", 11)
    with pytest.raises(errors.Conflict):
        await store.create_user("alice", "other", 12)
    assert (await store.get_user("alice")).password_hash == "hash-a"
    await store.create_user("Alice", "hash-b", 13)  # names are case-sensitive
    assert (await store.get_user("Alice")).password_hash == "hash-b"


# --- rooms ---------------------------------------------------------------------------------


async def test_room_kinds_and_owner_membership(store: Store) -> None:
    pub = await store.create_room("general", kind="public", owner="alice", ts=5)
    assert pub == RoomInfo("general", "public", "alice", 0, 5) and not pub.private
    priv = await store.create_room("secret", kind="private", owner="bob", ts=6)
    assert priv.private and priv.owner == "bob"
    dm = await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=7)
    assert dm == RoomInfo("dm:alice:bob", "direct", None, 0, 7)
    ownerless = await store.create_room("lobby", kind="public", owner=None, ts=8)
    assert ownerless.owner is None

    assert await store.get_room("general") == pub
    assert await store.get_room("nope") is None
    snap = await store.load_room("general")
    assert (
        snap.info == pub
        and snap.members == {"alice"}
        and snap.grants == frozenset()
        and dict(snap.cursors) == {}
    )
    snap = await store.load_room("secret")
    assert snap.members == {"bob"} and snap.grants == {"bob"}
    assert (await store.load_room("dm:alice:bob")).members == {"alice", "bob"}  # both users are members
    assert await store.room_members("general") == ["alice"]
    assert await store.room_members("lobby") == []
    assert await store.load_room("nope") is None


async def test_create_room_conflict(store: Store) -> None:
    await store.create_room("general", kind="public", owner="alice", ts=5)
    with pytest.raises(errors.Conflict):
        await store.create_room("general", kind="private", owner="bob", ts=6)
    assert await store.get_room("general") == RoomInfo("general", "public", "alice", 0, 5)
    assert await store.room_members("general") == ["alice"]


async def test_ensure_room_is_idempotent(store: Store) -> None:
    first = await store.ensure_room("general", kind="public", owner="alice", ts=5)
    again = await store.ensure_room("general", kind="private", owner="bob", ts=9)
    assert first == again == RoomInfo("general", "public", "alice", 0, 5)
    assert await store.room_members("general") == ["alice"]
    await store.commit(RoomBatch("general", (msg("alice", "x"),)))
    assert (await store.ensure_room("general", kind="public", owner=None, ts=10)).last_seq == 1


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("general", "secret"),
        ("general", "direct"),
        ("dm:bob:alice", "direct"),
        ("dm:a:a", "direct"),
        ("dm:alice:bob", "public"),
        ("dm:x", "direct"),
    ],
)
async def test_room_validation(store: Store, name: str, kind: str) -> None:
    with pytest.raises(ValueError):
        await store.create_room(name, kind=kind, owner=None, ts=1)
    with pytest.raises(ValueError):
        await store.ensure_room(name, kind=kind, owner=None, ts=1)
    assert await store.get_room(name) is None


async def test_grants(store: Store) -> None:
    await store.create_room("secret", kind="private", owner="alice", ts=1)
    await store.add_grant("secret", "bob")
    await store.add_grant("secret", "bob")
    snap = await store.load_room("secret")
    assert snap.grants == {"alice", "bob"}
    assert snap.members == {"alice"}  # a grant is not a membership
    assert [r.room for r in await store.user_rooms("bob")] == []
    with pytest.raises(errors.NotFound):
        await store.add_grant("nope", "bob")


# --- commit --------------------------------------------------------------------------------


async def test_seq_is_gap_free_across_batches(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    expected = 0
    for size in (1, 3, 1, 10, 2):
        results = await store.commit(
            RoomBatch("general", [msg("alice", f"c{next(_ids)}") for _ in range(size)])
        )
        assert [r.seq for r in results] == list(range(expected + 1, expected + size + 1))
        assert not any(r.duplicate for r in results)
        expected += size
        assert (await store.get_room("general")).last_seq == expected
    page, more = await store.history("general", before=None, after=None, limit=200)
    assert seqs(page) == list(range(1, expected + 1)) and not more


async def test_commit_stores_fields_and_meta(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    meta = {"reply_to": 3, "tags": ["a", "é"], "nested": {"x": None, "ok": True}, "f": 1.5}
    batch = RoomBatch(
        "general",
        (
            msg("alice", "c1", "héllo 👋", meta, 111),
            msg("bob", "c2", "plain", None, 112),
            msg("bob", "c3", "empty meta", {}, 113),
        ),
    )
    assert await store.commit(batch) == [
        AppendResult(1, 111, False),
        AppendResult(2, 112, False),
        AppendResult(3, 113, False),
    ]
    page, _ = await store.history("general", before=None, after=None, limit=10)
    assert page == [
        StoredMessage("general", 1, "c1", "alice", "héllo 👋", meta, 111),
        StoredMessage("general", 2, "c2", "bob", "plain", None, 112),
        StoredMessage("general", 3, "c3", "bob", "empty meta", {}, 113),
    ]
    page[0].meta["tags"].append("mutated")  # callers get their own copies
    assert (await store.history("general", before=2, after=None, limit=1))[0][0].meta == meta


async def test_dedup_across_batches(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    [first] = await store.commit(RoomBatch("general", (msg("alice", "c1", "original", ts=100),)))
    await store.commit(RoomBatch("general", (msg("bob", "c9", ts=101),)))
    again = await store.commit(RoomBatch("general", (msg("alice", "c1", "retry", ts=999),)))
    assert again == [AppendResult(first.seq, 100, True)]
    assert (await store.get_room("general")).last_seq == 2
    page, _ = await store.history("general", before=None, after=None, limit=10)
    assert [(m.seq, m.text) for m in page] == [(1, "original"), (2, "hello")]
    assert await store.find_message("general", "alice", "c1") == AppendResult(1, 100, True)
    assert await store.find_message("general", "alice", "c2") is None
    assert await store.find_message("nope", "alice", "c1") is None


async def test_dedup_within_one_batch(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    results = await store.commit(
        RoomBatch(
            "general",
            (
                msg("alice", "c1", "a", ts=10),
                msg("alice", "c1", "again", ts=11),
                msg("bob", "c1", "b", ts=12),
                msg("alice", "c1", "third", ts=13),
                msg("alice", "c2", "c", ts=14),
            ),
        )
    )
    assert results == [
        AppendResult(1, 10, False),
        AppendResult(1, 10, True),
        AppendResult(2, 12, False),
        AppendResult(1, 10, True),
        AppendResult(3, 14, False),
    ]
    page, _ = await store.history("general", before=None, after=None, limit=10)
    assert [(m.seq, m.sender, m.text) for m in page] == [
        (1, "alice", "a"),
        (2, "bob", "b"),
        (3, "alice", "c"),
    ]


async def test_dedup_with_awkward_ids(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    ids = ['q"uote', "back\\slash", "üñí 👋", "[1, 2]", "$[0]", "' OR 1=1 --"]
    first = await store.commit(RoomBatch("general", [msg("al'ice", cid, ts=i) for i, cid in enumerate(ids)]))
    assert [r.seq for r in first] == [1, 2, 3, 4, 5, 6]
    again = await store.commit(RoomBatch("general", [msg("al'ice", cid, ts=99) for cid in reversed(ids)]))
    assert again == [AppendResult(r.seq, r.ts, True) for r in reversed(first)]
    assert await store.find_message("general", "al'ice", "üñí 👋") == AppendResult(3, 2, True)


async def test_dedup_key_is_per_room(store: Store) -> None:
    await store.create_room("one", kind="public", owner=None, ts=1)
    await store.create_room("two", kind="public", owner=None, ts=1)
    assert (await store.commit(RoomBatch("one", (msg("alice", "c1"),))))[0].duplicate is False
    assert (await store.commit(RoomBatch("two", (msg("alice", "c1"),))))[0] == AppendResult(1, 1000, False)


async def test_sender_cursor_follows_own_messages(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    await store.commit(RoomBatch("general", (msg("alice", "a1"), msg("bob", "b1"), msg("alice", "a2"))))
    cursors = (await store.load_room("general")).cursors
    assert dict(cursors) == {"alice": 3, "bob": 2}
    await store.commit(RoomBatch("general", (msg("bob", "b1"),)))  # a duplicate moves nothing
    assert dict((await store.load_room("general")).cursors) == {"alice": 3, "bob": 2}


async def test_joins_leaves_and_cursors(store: Store) -> None:
    await store.create_room("general", kind="public", owner="alice", ts=1)
    await fill(store, "general", 5)
    assert await store.commit(RoomBatch("general", joins=("bob", "carol", "bob"))) == []
    assert await store.room_members("general") == ["alice", "bob", "carol"]
    await store.commit(RoomBatch("general", joins=("bob",), leaves=("carol", "dave")))
    assert await store.room_members("general") == ["alice", "bob"]
    await store.commit(RoomBatch("general", joins=("erin",), leaves=("erin",)))  # joins first, then leaves
    assert await store.room_members("general") == ["alice", "bob"]

    await store.commit(RoomBatch("general", cursors=(("bob", 3), ("carol", 2))))
    await store.commit(RoomBatch("general", cursors=(("bob", 2), ("carol", 0), ("dave", -1))))  # never back
    await store.commit(RoomBatch("general", cursors=(("erin", 99),)))  # clamped to last_seq
    cursors = dict((await store.load_room("general")).cursors)
    assert cursors == {"alice": 5, "bob": 3, "carol": 2, "erin": 5}
    # a cursor in the same batch as new messages is clamped to the new last_seq
    await store.commit(RoomBatch("general", (msg("bob", "late"),), cursors=(("carol", 50),)))
    assert dict((await store.load_room("general")).cursors)["carol"] == 6


async def test_commit_to_unknown_room(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        await store.commit(RoomBatch("nope", (msg("alice", "c1"),), joins=("alice",)))
    assert await store.get_room("nope") is None
    assert await store.user_rooms("alice") == []


async def test_batch_accepts_lists() -> None:
    batch = RoomBatch("r", [msg("a", "1")], ["x"], ["y"], [("x", 1)])
    assert batch.messages == (msg("a", "1"),) and batch.joins == ("x",) and batch.cursors == (("x", 1),)


async def test_nul_and_control_characters_round_trip(store: Store) -> None:
    """JSON lets a client send any code point, NUL included (PostgreSQL text cannot hold
    NUL: its backend escapes it); what comes back must be exactly what went in."""
    await store.create_room("general", kind="public", owner=None, ts=1)
    texts = ["a\x00b", "\x00", "\x01", "\x010", "\x011\x00\x01", "tab\tnl\n\x7f\x1b"]
    ids = ["\x00", "id\x00x", "\x01", "\x010", "\x00\x01", "plain"]
    meta = {"k\x00": "v\x00\x01", "n": [0, "\x00"]}
    batch = RoomBatch("general", [msg("alice", cid, text, meta, ts=i) for i, (cid, text) in enumerate(zip(ids, texts))])
    first = await store.commit(batch)
    assert [(r.seq, r.duplicate) for r in first] == [(i, False) for i in range(1, 7)]  # six distinct ids
    again = await store.commit(RoomBatch("general", [msg("alice", cid, "retry", ts=99) for cid in ids]))
    assert again == [AppendResult(r.seq, r.ts, True) for r in first]
    page, _ = await store.history("general", before=None, after=None, limit=10)
    assert [(m.client_id, m.text, m.meta) for m in page] == [(c, t, meta) for c, t in zip(ids, texts)]
    for r, cid in zip(first, ids):
        assert await store.find_message("general", "alice", cid) == AppendResult(r.seq, r.ts, True)


@pytest.fixture(params=["one store", "two stores"])
def second_writer(request: pytest.FixtureRequest, store: Store, store_url: str) -> str:
    if request.param == "two stores" and store_url.startswith("memory:"):
        pytest.skip("a memory store cannot be shared: two tasks on one store cover it")
    return request.param


async def test_two_writers_on_one_room_stay_gap_free(store: Store, peer: Store, second_writer: str) -> None:
    """Two writers (two tasks on one store, or two store instances as two nodes would be)
    commit interleaved batches to the same rooms, retrying each other's client ids: every
    room's seqs are exactly 1..N, each (sender, client_id) is stored once, and every retry,
    through either writer, gets the original seq and ts."""
    other = store if second_writer == "one store" else peer
    rooms = ("general", "random")
    for name in rooms:
        await store.create_room(name, kind="public", owner=None, ts=1)
    keys = [(sender, f"m{i}") for i in range(40) for sender in ("alice", "bob")]
    answers: dict[tuple[str, str, str], list[AppendResult]] = {}
    attempt = itertools.count(1)

    async def writer(target: Store, name: str, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            chosen = rng.sample(keys, rng.randint(1, 6))
            chosen += rng.sample(chosen, rng.randint(0, min(2, len(chosen))))  # repeats inside a batch
            batch = RoomBatch(name, [msg(s, c, f"{s}:{c}", ts=next(attempt)) for s, c in chosen])
            for (s, c), result in zip(chosen, await target.commit(batch)):
                answers.setdefault((name, s, c), []).append(result)
            await trio.sleep(rng.choice((0, 0, 0.001)))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n, name in enumerate(rooms):
                nursery.start_soon(writer, store, name, 2 * n)
                nursery.start_soon(writer, other, name, 2 * n + 1)
    for name in rooms:
        page, more = await store.history(name, before=None, after=None, limit=200)
        stored = {(m.sender, m.client_id): m for m in page}
        assert [m.seq for m in page] == list(range(1, len(page) + 1)) and not more  # no gap
        assert len(stored) == len(page)  # each key once
        assert (await other.get_room(name)).last_seq == len(page)
        tried = {(s, c) for (room, s, c) in answers if room == name}
        assert set(stored) == tried
        for key in tried:
            results = answers[(name, *key)]
            original = stored[key]
            assert {(r.seq, r.ts) for r in results} == {(original.seq, original.ts)}  # retries: the original
            assert [r.duplicate for r in results].count(False) == 1  # stored by exactly one commit
            assert original.text == f"{key[0]}:{key[1]}"


# --- history -------------------------------------------------------------------------------


async def test_history_cursor_combinations(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    assert await store.history("general", before=None, after=None, limit=5) == ([], False)
    await fill(store, "general", 10)

    async def h(before: int | None, after: int | None, limit: int) -> tuple[list[int], bool]:
        page, more = await store.history("general", before=before, after=after, limit=limit)
        return seqs(page), more

    assert await h(None, None, 3) == ([8, 9, 10], True)
    assert await h(None, None, 10) == (list(range(1, 11)), False)
    assert await h(None, None, 50) == (list(range(1, 11)), False)
    assert await h(8, None, 3) == ([5, 6, 7], True)
    assert await h(4, None, 3) == ([1, 2, 3], False)
    assert await h(1, None, 3) == ([], False)
    assert await h(99, None, 2) == ([9, 10], True)
    assert await h(None, 2, 3) == ([3, 4, 5], True)
    assert await h(None, 7, 3) == ([8, 9, 10], False)
    assert await h(None, 10, 3) == ([], False)
    assert await h(None, 0, 2) == ([1, 2], True)
    assert await h(9, 2, 3) == ([3, 4, 5], True)
    assert await h(9, 5, 3) == ([6, 7, 8], False)
    assert await h(6, 5, 3) == ([], False)
    assert await h(3, 7, 3) == ([], False)
    assert await h(10**30, None, 2) == ([9, 10], True)  # any non-negative int is a valid cursor
    assert await h(10**30, 10**30, 2) == ([], False)
    assert await h(10**30, 8, 10**30) == ([9, 10], False)
    assert await store.history("nope", before=None, after=None, limit=5) == ([], False)
    with pytest.raises(ValueError):
        await store.history("general", before=None, after=None, limit=0)


def model_history(n: int, before: int | None, after: int | None, limit: int) -> tuple[list[int], bool]:
    """PROTOCOL section 5 history, stated directly on the list of stored seqs 1..n."""
    candidates = [
        s for s in range(1, n + 1) if (after is None or s > after) and (before is None or s < before)
    ]
    page = candidates[-limit:] if after is None else candidates[:limit]
    return page, len(candidates) > limit


cursor = st.none() | st.integers(min_value=0, max_value=45)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(min_value=0, max_value=40),
    batch=st.integers(min_value=1, max_value=12),
    queries=st.lists(
        st.tuples(cursor, cursor, st.integers(min_value=1, max_value=45)), min_size=1, max_size=15
    ),
)
async def test_history_matches_model(store_url: str, n: int, batch: int, queries: list) -> None:
    # Each example runs in its own trio run, so the store is opened here rather than taken from
    # the async fixture; a sqlite file outlives one example, hence a fresh room each time.
    room = f"prop{next(_ids)}"
    async with open_store(store_url) as store:
        await store.create_room(room, kind="public", owner=None, ts=1)
        await fill(store, room, n, batch=batch)
        for before, after, limit in queries:
            page, more = await store.history(room, before=before, after=after, limit=limit)
            assert (seqs(page), more) == model_history(n, before, after, limit), (before, after, limit)
            assert all(m.text == f"m{m.seq}" and m.room == room for m in page)


async def test_messages_between(store: Store) -> None:
    await store.create_room("general", kind="public", owner=None, ts=1)
    await fill(store, "general", 10)
    assert seqs(await store.messages_between("general", 3, 6, 100)) == [4, 5, 6]
    assert seqs(await store.messages_between("general", 3, 9, 2)) == [4, 5]
    assert seqs(await store.messages_between("general", 0, 99, 100)) == list(range(1, 11))
    assert seqs(await store.messages_between("general", 6, 6, 10)) == []
    assert seqs(await store.messages_between("general", 7, 3, 10)) == []
    assert seqs(await store.messages_between("general", 8, 10**30, 10**30)) == [9, 10]
    assert await store.messages_between("nope", 0, 10, 10) == []


# --- per-user views ------------------------------------------------------------------------


async def test_user_rooms(store: Store) -> None:
    await store.create_room("general", kind="public", owner="alice", ts=1)
    await store.create_room("random", kind="public", owner="bob", ts=1)
    await store.create_room("secret", kind="private", owner="carol", ts=1)
    await store.add_grant("secret", "alice")
    await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=1)
    await store.create_room("dm:bob:carol", kind="direct", owner=None, ts=1)
    await fill(store, "general", 4, sender="bob")
    await store.commit(RoomBatch("general", cursors=(("alice", 2),)))
    await fill(store, "dm:alice:bob", 3, sender="bob")

    assert await store.user_rooms("alice") == [
        UserRoom("dm:alice:bob", 3, 0),  # not joined, still listed
        UserRoom("general", 4, 2),
    ]
    await store.commit(RoomBatch("secret", joins=("alice",)))
    await store.commit(RoomBatch("general", leaves=("alice",)))
    assert [r.room for r in await store.user_rooms("alice")] == ["dm:alice:bob", "secret"]
    assert await store.user_rooms("bob") == [
        UserRoom("dm:alice:bob", 3, 3),
        UserRoom("dm:bob:carol", 0, 0),
        UserRoom("random", 0, 0),
    ]
    assert await store.user_rooms("nobody") == []


async def test_user_rooms_limit_and_count(store: Store) -> None:
    """The per-user room cap (PROTOCOL section 7): count what welcome lists, list at most a limit."""
    for name in ("c", "a", "b"):
        await store.create_room(name, kind="public", owner=None, ts=1)
        await store.commit(RoomBatch(name, joins=("alice",)))
    await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=1)
    assert await store.count_user_rooms("alice") == 4
    assert await store.count_user_rooms("bob") == 1
    assert await store.count_user_rooms("nobody") == 0
    assert [r.room for r in await store.user_rooms("alice", limit=2)] == ["a", "b"]
    assert len(await store.user_rooms("alice", limit=10)) == 4
    await store.commit(RoomBatch("dm:alice:bob", leaves=("alice",)))  # a direct room stays listed
    await store.commit(RoomBatch("a", leaves=("alice",)))
    assert await store.count_user_rooms("alice") == 3


async def test_list_rooms_visibility(store: Store) -> None:
    await store.create_room("general", kind="public", owner="alice", ts=1)
    await store.create_room("lobby", kind="public", owner=None, ts=2)
    await store.create_room("mine", kind="private", owner="alice", ts=3)
    await store.create_room("granted", kind="private", owner="bob", ts=4)
    await store.add_grant("granted", "alice")
    await store.create_room("hidden", kind="private", owner="bob", ts=5)
    await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=6)
    await store.create_room("dm:bob:carol", kind="direct", owner=None, ts=7)
    await store.add_grant("dm:bob:carol", "alice")  # grants give nothing outside private rooms
    await store.commit(RoomBatch("general", (msg("bob", "x"),), joins=("bob", "carol")))

    listing = await store.list_rooms("alice")
    assert [r.info.name for r in listing] == ["dm:alice:bob", "general", "granted", "lobby", "mine"]
    by_name = {r.info.name: r for r in listing}
    assert by_name["general"] == RoomListing(RoomInfo("general", "public", "alice", 1, 1), 3)
    assert by_name["granted"].members == 1 and by_name["granted"].info.private
    assert by_name["lobby"].members == 0 and by_name["mine"].members == 1
    assert [r.info.name for r in await store.list_rooms("carol")] == ["dm:bob:carol", "general", "lobby"]
    assert [r.info.name for r in await store.list_rooms("bob")] == [
        "dm:alice:bob",
        "dm:bob:carol",
        "general",
        "granted",
        "hidden",
        "lobby",
    ]


async def test_undelivered_direct(store: Store) -> None:
    await store.create_room("dm:alice:bob", kind="direct", owner=None, ts=1)
    await store.create_room("dm:alice:carol", kind="direct", owner=None, ts=1)
    await store.create_room("dm:bob:carol", kind="direct", owner=None, ts=1)
    await store.create_room("general", kind="public", owner=None, ts=1)
    await fill(store, "dm:alice:bob", 5, sender="bob")
    await fill(store, "dm:alice:carol", 2, sender="carol")
    await fill(store, "dm:bob:carol", 2, sender="carol")
    await fill(store, "general", 2, sender="bob")

    got = await store.undelivered_direct("alice", 1000)
    assert [(m.room, m.seq) for m in got] == [("dm:alice:bob", s) for s in range(1, 6)] + [
        ("dm:alice:carol", 1),
        ("dm:alice:carol", 2),
    ]
    got = await store.undelivered_direct("alice", 2)  # the oldest per room
    assert [(m.room, m.seq) for m in got] == [
        ("dm:alice:bob", 1),
        ("dm:alice:bob", 2),
        ("dm:alice:carol", 1),
        ("dm:alice:carol", 2),
    ]
    await store.commit(RoomBatch("dm:alice:bob", cursors=(("alice", 3),)))
    await store.commit(RoomBatch("dm:alice:carol", cursors=(("alice", 2),)))
    got = await store.undelivered_direct("alice", 1000)
    assert [(m.room, m.seq, m.text) for m in got] == [("dm:alice:bob", 4, "m4"), ("dm:alice:bob", 5, "m5")]
    assert [(m.room, m.seq) for m in await store.undelivered_direct("bob", 10)] == [
        ("dm:bob:carol", 1),
        ("dm:bob:carol", 2),
    ]  # bob's cursor in dm:alice:bob is at his own 5
    assert await store.undelivered_direct("nobody", 10) == []


# --- health --------------------------------------------------------------------------------


async def test_ping_and_close(store: Store) -> None:
    await store.ping()
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(errors.Unavailable):
        await store.ping()
    with pytest.raises(errors.Unavailable):
        await store.commit(RoomBatch("general", (msg("alice", "c1"),)))
    with pytest.raises(errors.Unavailable):
        await store.get_user("alice")


async def test_memory_store_can_be_switched_off() -> None:
    """The test hook other suites use to simulate a store that is down."""
    async with open_store("memory://") as store:
        await store.create_room("general", kind="public", owner=None, ts=1)
        store.available = False
        with pytest.raises(errors.Unavailable):
            await store.commit(RoomBatch("general", (msg("alice", "c1"),)))
        with pytest.raises(errors.Unavailable):
            await store.ping()
        store.available = True
        assert (await store.commit(RoomBatch("general", (msg("alice", "c1"),))))[0].seq == 1
