"""The spool file: order, states, trimming, and that it survives being reopened."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.spool import Spool, SpoolCounts, SpooledRecord, SpoolError


def delivery(n: int, events: int = 1) -> list[SpooledRecord]:
    records = [SpooledRecord("raw", f"d{n}".encode(), b'{"n": %d}' % n)]
    records += [SpooledRecord("events", b"item", b'{"e": "%d-%d"}' % (n, i)) for i in range(events)]
    return records


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool.db")


def test_pending_deliveries_come_back_in_order_with_their_records(spool: Spool) -> None:
    """Pending deliveries are returned oldest first, each with its records in order."""
    seqs = [spool.append(delivery(n, events=n % 3)) for n in range(10)]
    got = spool.pending(100)
    assert [d.seq for d in got] == seqs
    assert [list(d.records) for d in got] == [delivery(n, events=n % 3) for n in range(10)]
    assert [d.seq for d in spool.pending(3)] == seqs[:3]
    assert spool.counts == SpoolCounts(pending=10, unconfirmed=0)


def test_reopened_spool_has_everything_it_acknowledged(tmp_path: Path) -> None:
    """Closing and reopening (a collector restart) loses nothing and keeps the order."""
    path = tmp_path / "spool.db"
    with Spool(path) as first:
        seqs = [first.append(delivery(n)) for n in range(5)]
        first.mark_published({seqs[0]: [(0, 7)]})
    with Spool(path) as again:
        assert again.counts == SpoolCounts(pending=4, unconfirmed=1)
        assert [d.seq for d in again.pending(10)] == seqs[1:]
        assert again.append(delivery(99)) > seqs[-1]


def test_published_without_events_is_forgotten_with_events_waits(spool: Spool) -> None:
    """A delivery with no events is done once in Kafka; one with events waits for the group."""
    a = spool.append([SpooledRecord("dlq", b"x", b"{}")])
    b = spool.append(delivery(1))
    spool.mark_published({a: [], b: [(2, 10)]})
    assert spool.pending(10) == []
    assert spool.counts == SpoolCounts(pending=0, unconfirmed=1)


def test_trim_needs_every_event_committed_past(spool: Spool) -> None:
    """An unconfirmed delivery goes only when the group committed past all its offsets."""
    one = spool.append(delivery(1, events=2), acks=[(0, 5), (1, 9)])
    spool.append(delivery(2), acks=[(3, 0)])
    assert spool.trim_confirmed({0: 6}) == 0  # partition 1 not committed at all
    assert spool.trim_confirmed({0: 6, 1: 9}) == 0  # offset 9 itself not yet consumed
    assert spool.trim_confirmed({0: 6, 1: 10}) == 1
    assert spool.counts == SpoolCounts(pending=0, unconfirmed=1)
    assert one not in {d.seq for d in spool.pending(10)}


def test_requeue_makes_unconfirmed_pending_again_in_acceptance_order(spool: Spool) -> None:
    """After a broker lost data, unconfirmed and pending deliveries drain in their old order."""
    first = spool.append(delivery(1), acks=[(0, 1)])
    second = spool.append(delivery(2))
    third = spool.append(delivery(3), acks=[(0, 2)])
    assert spool.requeue_unconfirmed() == 2
    assert [d.seq for d in spool.pending(10)] == [first, second, third]
    assert spool.counts == SpoolCounts(pending=3, unconfirmed=0)
    assert spool.trim_confirmed({0: 100}) == 0  # requeued acks no longer count


def test_second_opener_is_refused(tmp_path: Path) -> None:
    """Two collectors cannot share a spool: the second one fails at start."""
    path = tmp_path / "spool.db"
    with Spool(path) as first:
        first.append(delivery(1))
        with pytest.raises(SpoolError):
            Spool(path)


def test_unwritable_location_is_a_spool_error(tmp_path: Path) -> None:
    """A spool that cannot be created raises SpoolError (the collector answers 503)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError):
        Spool(blocker / "spool.db")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("publish"), st.integers(1, 4), st.integers(0, 3)),
        st.tuples(st.just("trim"), st.integers(0, 12), st.integers(0, 12)),
        st.tuples(st.just("requeue"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_spool_behaves_like_its_model(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:  # type: ignore[type-arg]
    """Any sequence of appends, drains, trims, requeues and reopens matches a list model."""
    path = tmp_path_factory.mktemp("model") / "spool.db"
    spool = Spool(path)
    # seq -> (records, state, acks); state "p" pending or "u" unconfirmed
    model: dict[int, tuple[list[SpooledRecord], str, list[tuple[int, int]]]] = {}
    next_offset = {0: 0, 1: 0}
    n = 0
    for op, a, b in ops:
        if op == "append":
            n += 1
            records = delivery(n, events=a)
            acks = [(i % 2, next_offset[i % 2] + i) for i in range(a)] if b and a else None
            seq = spool.append(records, acks=acks)
            model[seq] = (records, "u" if acks else "p", acks or [])
        elif op == "publish":
            batch = spool.pending(a)
            expected = [s for s, (_, st_, _) in sorted(model.items()) if st_ == "p"][:a]
            assert [d.seq for d in batch] == expected
            published = {}
            for d in batch:
                events = [r for r in d.records if r.role == "events"]
                acks = []
                for _ in events:
                    acks.append((b % 2, next_offset[b % 2]))
                    next_offset[b % 2] += 1
                published[d.seq] = acks
                if acks:
                    model[d.seq] = (model[d.seq][0], "u", acks)
                else:
                    del model[d.seq]
            spool.mark_published(published)
        elif op == "trim":
            committed = {0: a, 1: b}
            spool.trim_confirmed(committed)
            for seq, (_, state, acks) in list(model.items()):
                if state == "u" and all(o < committed[p] for p, o in acks):
                    del model[seq]
        elif op == "requeue":
            spool.requeue_unconfirmed()
            model = {s: (r, "p", []) for s, (r, _, _) in model.items()}
        else:
            spool.close()
            spool = Spool(path)
        pending = [s for s, (_, st_, _) in sorted(model.items()) if st_ == "p"]
        assert [d.seq for d in spool.pending(1000)] == pending
        assert spool.counts == SpoolCounts(len(pending), len(model) - len(pending))
        for d in spool.pending(1000):
            assert list(d.records) == model[d.seq][0]
    spool.close()


def test_spool_of_another_topic_prefix_is_refused(tmp_path: Path) -> None:
    """A spool never hands its deliveries to another deployment's topics."""
    path = tmp_path / "spool.db"
    Spool(path, "prod").close()
    with pytest.raises(SpoolError, match="prod"):
        Spool(path, "staging")
    Spool(path, "prod").close()
