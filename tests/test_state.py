"""The changelog rules of streamfn.state that make a restored state exact: what a replayed record may change."""

from __future__ import annotations

from streamfn.state.changelog import ChangelogEntry
from streamfn.state.store import META_KEY, PartitionState


def test_a_restored_state_skips_what_its_last_checkpoints_already_hold() -> None:
    entries = [
        ChangelogEntry(b"a", b"1", 10),
        ChangelogEntry(META_KEY, b'{"seen": 5}', 10),  # the last complete checkpoint: up to offset 10
        ChangelogEntry(b"b", b"2", 20),  # a checkpoint cut short after b, before its metadata
        ChangelogEntry(b"c", None, 20),  # a window deleted by that checkpoint
    ]
    state = PartitionState(entries)
    assert (state.values, state.meta, state.floor, state.replay_until) == ({b"a": 1, b"b": 2}, {"seen": 5}, 10, 20)
    assert state.seen(at(9), b"a") and state.seen(at(9), b"zz")  # below the floor: in every key
    assert state.seen(at(15), b"b") and state.seen(at(15), b"c")  # in the keys the cut-short checkpoint wrote
    assert not state.seen(at(15), b"a") and not state.seen(at(20), b"b")
    state.stage(20)  # the replay is over: only what is below the floor would still be skipped
    assert not state.seen(at(15), b"b") and state.seen(at(9), b"b")


def at(offset: int) -> int:
    """What `seen` takes for the Kafka record at `offset`: the checkpoint covering it (KafkaReader.position_after)."""
    return offset + 1


def test_a_commit_writes_the_latest_value_of_each_changed_key_then_the_metadata() -> None:
    state = PartitionState()
    state.set(b"a", 1)
    state.set(b"b", 1)
    state.stage(5)
    state.set(b"a", 2)
    state.delete(b"b")
    state.meta["seen"] = 9
    state.stage(8)
    state.set(b"c", 1)
    state.stage(12)
    assert state.take(8) == [
        ChangelogEntry(b"a", b"2", 8),
        ChangelogEntry(b"b", None, 8),
        ChangelogEntry(META_KEY, b'{"seen":9}', 8),
    ]
    later = state.take(100)
    assert later == [ChangelogEntry(b"c", b"1", 12), ChangelogEntry(META_KEY, b'{"seen":9}', 12)]
    state.unstage(later)  # the write failed: the next commit writes the same again
    assert state.take(12) == [ChangelogEntry(b"c", b"1", 12), ChangelogEntry(META_KEY, b'{"seen":9}', 12)]
