"""The sequencer alone: whatever order, loss and duplication the two roads (own commits and
the bus) produce, local connections get every seq once, in order, with store reads filling
what never came."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chat_actors.sequencer import HOLD_S, Sequencer


def item(seq: int, sender: str | None = None) -> tuple[bytes, int, str | None]:
    return (b"m%d" % seq, seq, sender)


def seqs(items) -> list[int]:
    return [seq for _, seq, _ in items]


def test_the_next_seqs_pass_through_unchanged() -> None:
    s: Sequencer[str | None] = Sequencer(3)
    batch = [item(4, "a"), item(5), item(6, "b")]
    assert s.offer_batch(batch, 0.0) is batch
    assert s.delivered == 6 and s.gap(0.0) is None


def test_duplicates_and_old_seqs_are_dropped() -> None:
    s: Sequencer[str | None] = Sequencer(5)
    assert s.offer(item(5), 0.0) == [] and s.offer(item(2), 0.0) == []
    assert seqs(s.offer(item(6), 0.0)) == [6]
    assert s.offer(item(6), 0.0) == []


def test_an_early_message_waits_then_the_gap_is_read() -> None:
    s: Sequencer[str | None] = Sequencer(1)
    assert s.offer(item(4, "me"), 10.0) == []
    assert s.gap(10.0) is None                       # holding: the bus may bring 2 and 3
    assert s.gap(10.0 + HOLD_S) == (1, 4)
    ready = s.filled([item(2), item(3), item(4)], 10.1, complete=True)
    assert seqs(ready) == [2, 3, 4]
    assert ready[-1][2] == "me"                      # the held copy keeps its sender
    assert s.delivered == 4 and s.gap(99.0) is None


def test_the_missing_one_arriving_releases_the_held_ones() -> None:
    s: Sequencer[str | None] = Sequencer(0)
    assert s.offer(item(2), 0.0) == [] and s.offer(item(3), 0.0) == []
    assert seqs(s.offer(item(1), 0.01)) == [1, 2, 3]
    assert s.gap(1.0) is None


def test_a_noted_head_is_read_from_the_store() -> None:
    s: Sequencer[str | None] = Sequencer(7)
    s.note_head(9, 5.0, at_once=True)
    assert s.gap(5.0) == (7, 9)
    assert seqs(s.filled([item(8)], 5.0, complete=False)) == [8]
    assert s.gap(5.0) == (8, 9)                      # a page short: asked again at once
    assert seqs(s.filled([item(9)], 5.0, complete=True)) == [9]


def test_start_at_moves_forward_only() -> None:
    s: Sequencer[str | None] = Sequencer(10)
    assert s.start_at(4) == [] and s.delivered == 10
    assert s.offer(item(13), 0.0) == []
    assert seqs(s.start_at(12)) == [13]
    assert s.delivered == 13 and s.gap(99.0) is None


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=60),
    data=st.data(),
)
def test_any_schedule_delivers_each_seq_once_in_order(n: int, data: st.DataObject) -> None:
    """Arrivals: each seq 0..3 times, in any order; then store reads until no gap is due."""
    arrivals: list[int] = []
    for seq in range(1, n + 1):
        arrivals.extend([seq] * data.draw(st.integers(0, 3), label=f"copies of {seq}"))
    arrivals = data.draw(st.permutations(arrivals), label="order")
    s: Sequencer[str | None] = Sequencer(0)
    out: list[int] = []
    now = 0.0
    for seq in arrivals:
        now += data.draw(st.sampled_from([0.0, 0.01, 0.1]))
        out += seqs(s.offer(item(seq), now))
        gap = s.gap(now)
        if gap is not None:
            after, upto = gap
            page = [item(q) for q in range(after + 1, min(upto, after + 5) + 1)]
            out += seqs(s.filled(page, now, complete=after + 5 >= upto))
    s.note_head(n, now)                     # the room's head, as a reconnect reads it
    for _ in range(2 * n + 2):
        now += 1.0
        gap = s.gap(now)
        if gap is None:
            break
        after, upto = gap
        page = [item(q) for q in range(after + 1, min(upto, after + 5) + 1)]
        out += seqs(s.filled(page, now, complete=after + 5 >= upto))
    assert out == list(range(1, n + 1))
