"""The library's pure parts: a room's stream state, the backoff, the error mapping, the
saved credentials file."""

from __future__ import annotations

import os
import random
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_actors.client import (
    Backoff, BadRequest, ChatError, Conflict, Credentials, Forbidden, Internal, NotFound, NotJoined, RateLimited,
    TooLarge, Unauthorized, Unavailable,
)
from chat_actors.client import credentials
from chat_actors.client.errors import error_for
from chat_actors.client.rooms import RoomStream
from chat_actors.errors import ErrorCode
from chat_actors.records import Message


def msg(seq: int, room: str = "r") -> Message:
    return Message(room, seq, f"id{seq}", "alice", f"text {seq}", None, seq)


# --------------------------------------------------------------------------- RoomStream


def drain(stream: RoomStream, out: list[int], capacity: int = 10**9) -> None:
    """What the reader does: hand over in-order messages while the buffer has room."""
    while capacity and (m := stream.peek()) is not None:
        stream.commit(m.seq)
        out.append(m.seq)
        capacity -= 1


def fill_from_store(stream: RoomStream, out: list[int], stored: int, page: int = 200) -> None:
    """What the filler does on a gap: one `history after=last` page, handed over in order."""
    assert stream.last is not None
    for seq in range(stream.last + 1, min(stream.last + page, stored) + 1):
        stream.commit(seq)
        out.append(seq)


def check(stream: RoomStream) -> None:
    assert stream.last is not None
    assert all(stream.last < s <= stream.head for s in stream.held)
    assert len(stream.held) <= stream.hold_limit


def test_duplicates_are_dropped_and_early_messages_wait():
    stream, out = RoomStream("r", last=0), []
    assert stream.offer(msg(2)) and stream.peek() is None and stream.needs_history()
    assert stream.offer(msg(1)) and not stream.offer(msg(1)) and not stream.offer(msg(2))
    drain(stream, out)
    assert out == [1, 2] and stream.caught_up()
    assert not stream.offer(msg(1)) and not stream.offer(msg(2))  # replays of handed-over ones


def test_a_full_hold_keeps_the_lowest_seqs():
    stream = RoomStream("r", last=0, hold_limit=2)
    for seq in (5, 4, 3, 2):
        stream.offer(msg(seq))
    assert sorted(stream.held) == [2, 3] and stream.head == 5
    assert not stream.offer(msg(6)) and stream.head == 6  # not held, but known to exist


def test_a_join_without_since_starts_at_the_joined_seq():
    stream = RoomStream("r")
    assert not stream.offer(msg(3)) and stream.peek() is None and not stream.caught_up()
    stream.on_joined(7)
    assert stream.caught_up() and stream.confirmed and stream.last == 7
    stream.on_joined(9)  # a later join (resume) only moves the head
    assert stream.last == 7 and stream.needs_history()


def test_a_room_that_lost_messages_restarts_the_stream_at_its_seq():
    stream, out = RoomStream("r", last=0), []
    for seq in (1, 2, 3, 4, 6):
        stream.offer(msg(seq))
    drain(stream, out)
    assert stream.on_joined(2) is False  # the room now ends at 2 (restored from a backup)
    assert (stream.last, stream.head, stream.held) == (2, 2, {})
    assert stream.offer(msg(3)) and stream.peek() == msg(3)  # the new seq 3 is not a "duplicate"


@settings(max_examples=300, deadline=None)
@given(
    stored=st.integers(min_value=1, max_value=60),
    hold=st.integers(min_value=1, max_value=8),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("arrive"), st.integers(min_value=1, max_value=60)),
            st.tuples(st.just("read"), st.integers(min_value=0, max_value=5)),
            st.tuples(st.just("fill"), st.integers(min_value=1, max_value=7)),
        ),
        max_size=120,
    ),
)
def test_any_arrival_order_yields_each_seq_once_in_order(stored, hold, ops):
    """Duplicates, reordering, a tiny hold and a slow reader: what is handed over is always
    1, 2, 3, ... with no repeat, and once the store has been read it is complete."""
    stream, out = RoomStream("r", last=0, hold_limit=hold), []
    for op, n in ops:
        if op == "arrive" and n <= stored:
            stream.offer(msg(n))
        elif op == "read":
            drain(stream, out, capacity=n)
        elif op == "fill" and stream.needs_history():
            fill_from_store(stream, out, stored, page=n)
        check(stream)
        assert out == list(range(1, len(out) + 1))
    stream.see_head(stored)  # e.g. `joined.seq` after a reconnect
    while not stream.caught_up():
        drain(stream, out)
        if stream.needs_history():
            fill_from_store(stream, out, stored)
    assert out == list(range(1, stored + 1))


# --------------------------------------------------------------------------- Backoff


def test_backoff_grows_caps_and_jitters_within_bounds():
    policy = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > base * 0.3  # spread: clients do not retry in lockstep
    assert Backoff(jitter=0).delay(3) == 4.0
    for bad in ({"initial": 0}, {"maximum": -1}, {"factor": 0.5}, {"jitter": 1.5}):
        with pytest.raises(ValueError):
            Backoff(**bad)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("bad_request", BadRequest), ("unauthorized", Unauthorized), ("forbidden", Forbidden),
        ("not_found", NotFound), ("not_joined", NotJoined), ("conflict", Conflict), ("too_large", TooLarge),
        ("rate_limited", RateLimited), ("unavailable", Unavailable), ("internal", Internal),
    ],
)
def test_every_protocol_code_has_its_exception(code, cls):
    error = error_for(code, "why", ref=3)
    assert type(error) is cls and error.code == code and error.message == "why" and error.ref == 3
    assert isinstance(error, ChatError)


def test_every_error_code_is_covered():
    assert {error_for(code.value).code for code in ErrorCode} == set(ErrorCode)


def test_unknown_codes_fall_back_on_the_status():
    assert type(error_for(None, "gone", status=503)) is Unavailable
    assert type(error_for("brand_new", "?", status=418)) is ChatError
    assert type(error_for("brand_new", "?")) is Internal


# --------------------------------------------------------------------------- credentials


def test_credentials_are_private_and_kept_per_server(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = Credentials("alice", "token-1", 1)
    other = Credentials("bob", "token-2", 2)
    path = credentials.save("http://a:3001", first)
    credentials.save("http://b:3001", other)
    assert path == tmp_path / "chat-actors" / "credentials.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert credentials.load("http://a:3001") == first and credentials.load("http://b:3001") == other
    assert credentials.load("http://c:3001") is None
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temporary left


def test_a_relative_xdg_config_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert credentials.credentials_path() == tmp_path / ".config" / "chat-actors" / "credentials.json"


def test_a_damaged_credentials_file_reads_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = credentials.credentials_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert credentials.load("http://a:3001") is None
    credentials.save("http://a:3001", Credentials("alice", "t", 1))
    assert credentials.load("http://a:3001") == Credentials("alice", "t", 1)
