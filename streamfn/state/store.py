"""Durable keyed state of stateful functions (aggregations, Lambda-style tumbling windows), per source partition.

The state of a partition is a dict in memory. A batch's changes are staged when the batch completes (serialized
then, so later batches cannot alter them), and written to the changelog just before the checkpoint commits the
offsets they cover: the log is always at least as far as the committed offset, and a worker that takes the
partition (after a restart, a kill -9 or a rebalance) rebuilds the exact state from it.

Exactness without transactions: each changelog entry carries `applied`, the checkpoint value up to which its value
reflects the source partition. A commit writes every changed key, then the partition's metadata entry last, all
with the same `applied`, so after a restore:
- a record the metadata's `applied` (the `floor`) covers is already in every key it touched: skipped;
- a record a key's own `applied` covers (written by a checkpoint the crash cut short, before its metadata) is
  already in that key: skipped for that key only;
- anything else is folded again. So each record counts exactly once in every window, whatever the crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import orjson

from streamfn.outputs.sink import Emitted, encode_json
from streamfn.record import Partition, Position, Record, SourceRecord
from streamfn.state.changelog import Changelog, ChangelogEntry

log = logging.getLogger("streamfn.state")


class Busy(Protocol):
    """The lane a batch runs in: told when work that should finish within the grace period is under way."""

    busy: int
    """Invocations and sink writes under way: on revoke or shutdown, they may finish within the timeout."""

    @property
    def stopping(self) -> bool: ...


WriteOutputs = Callable[[list[Emitted], Busy], Awaitable[Exception | None]]
"""Writes a stateful function's results to its sinks (with their retries): None, or the error that outlasted them."""

R = TypeVar("R", SourceRecord, Record)

PositionAfter = Callable[[SourceRecord | Record], Position]
"""The source's checkpoint value covering a record (`SourceReader.position_after`): a record is covered by
checkpoint C iff position_after(record) <= C."""

META_KEY = b"\x00meta"
"""The partition's own entry (a watermark, an open Lambda window): written last at each checkpoint."""


def encode_meta(meta: dict[str, Any]) -> bytes:
    """The partition's entry as JSON. The positions it holds (`last`, `covers`) may pass 64 bits (Kinesis's and
    DynamoDB Streams' sequence numbers), which orjson cannot write: such an entry is written by the standard
    library's json, once per batch, as `decode_meta` reads every entry back, exactly (orjson would make them
    floats)."""
    try:
        return encode_json(meta)
    except TypeError:
        return json.dumps(meta, separators=(",", ":")).encode()


def decode_meta(data: bytes | None) -> dict[str, Any]:
    meta: dict[str, Any] = {} if data is None else json.loads(data) or {}
    return meta


class PartitionState:
    """One partition's keyed state: values (JSON-serializable) in memory, changes staged for the changelog."""

    def __init__(self, entries: Iterable[ChangelogEntry] = ()) -> None:
        self.values: dict[bytes, Any] = {}
        self.meta: dict[str, Any] = {}
        self.floor: Position = 0
        """Records this checkpoint value covers are reflected in the whole state (the last complete checkpoint)."""
        applied: dict[bytes, Position] = {}
        for entry in entries:
            if entry.key == META_KEY:
                self.meta, self.floor = decode_meta(entry.value), entry.applied
                continue
            value = None if entry.value is None else orjson.loads(entry.value)
            if value is None:
                self.values.pop(entry.key, None)
            else:
                self.values[entry.key] = value
            applied[entry.key] = entry.applied
        self._replayed = {key: offset for key, offset in applied.items() if offset > self.floor}
        """Keys an interrupted checkpoint wrote past the floor, with how far each already reflects."""
        self.replay_until = max(self._replayed.values(), default=self.floor)
        self._dirty: dict[bytes, None] = {}
        """Keys changed since the last stage, in the order they changed (a dict: deterministic, unlike a set)."""
        self._staged: list[tuple[Position, dict[bytes, bytes | None]]] = []

    def seen(self, after: Position, key: bytes) -> bool:
        """Whether the record whose `position_after` is `after` is already reflected in `key` (a record replayed
        after a restore)."""
        if after <= self.floor:
            return True
        applied = self._replayed.get(key)
        return applied is not None and after <= applied

    def set(self, key: bytes, value: Any) -> None:
        self.values[key] = value
        self._dirty[key] = None

    def delete(self, key: bytes) -> None:
        if self.values.pop(key, None) is not None:
            self._dirty[key] = None

    def stage(self, applied: Position) -> None:
        """The state now reflects every record checkpoint `applied` covers: stage the changes for the next commit."""
        changes: dict[bytes, bytes | None] = {
            key: None if (value := self.values.get(key)) is None else encode_json(value) for key in self._dirty
        }
        changes[META_KEY] = encode_meta(self.meta)
        self._dirty.clear()
        self._staged.append((applied, changes))
        if applied >= self.replay_until:
            self._replayed.clear()  # the replay is over: nothing past here was seen before

    def take(self, upto: Position) -> list[ChangelogEntry]:
        """The staged entries covered by a commit at `upto`, latest value per key, the metadata entry last."""
        ready = [staged for staged in self._staged if staged[0] <= upto]
        if not ready:
            return []
        self._staged = self._staged[len(ready) :]
        latest: dict[bytes, tuple[Position, bytes | None]] = {}
        for applied, changes in ready:
            for key, value in changes.items():
                latest.pop(key, None)  # re-inserted: keys keep the order of their last change
                latest[key] = (applied, value)
        meta = latest.pop(META_KEY)
        entries = [ChangelogEntry(key, value, applied) for key, (applied, value) in latest.items()]
        entries.append(ChangelogEntry(META_KEY, meta[1], meta[0]))
        return entries

    def unstage(self, entries: list[ChangelogEntry]) -> None:
        """Entries whose write failed: staged again, before anything staged since, to be written by the next commit."""
        self._staged.insert(0, (entries[-1].applied, {e.key: e.value for e in entries}))


class StateStore:
    """The state of every partition a function owns, and its changelog."""

    def __init__(self, function: str, changelog: Changelog, position_after: PositionAfter) -> None:
        self._function = function
        self._changelog = changelog
        self.position_after = position_after
        self.value_limit = changelog.value_limit
        """The largest serialized value the changelog takes in one entry (None: no limit below the state's own)."""
        self._partitions: dict[Partition, PartitionState] = {}
        self._writing: dict[Partition, asyncio.Lock] = {}
        """One changelog write per partition at a time, so a key's entries land in the order they were staged."""
        self._started = False
        self._starting = asyncio.Lock()

    def __getitem__(self, partition: Partition) -> PartitionState:
        return self._partitions[partition]

    def uncovered(self, records: Sequence[R], checkpoint: Position) -> Sequence[R]:
        """The records (in position order) that `checkpoint` does not cover: a bisection, not a look at each."""
        after = self.position_after
        if not records or checkpoint < after(records[0]):
            return records
        return records[bisect_right(records, checkpoint, key=after) :]

    async def restore(self, partition: Partition) -> PartitionState:
        """Rebuild `partition`'s state from its changelog (run by the partition's lane, off the rebalance path)."""
        async with self._starting:
            if not self._started:
                await self._changelog.start()
                self._started = True
        began = time.monotonic()
        entries = await self._changelog.restore(partition)
        state = self._partitions[partition] = PartitionState(entries)
        if entries:
            log.info(
                "function %s: %s: state restored from %d changelog entries in %.2f s (%d keys, up to offset %s)",
                self._function,
                partition,
                len(entries),
                time.monotonic() - began,
                len(state.values),
                state.floor,
            )
        return state

    async def write(self, offsets: Mapping[Partition, Position]) -> None:
        """Write what commits at `offsets` cover to the changelog; raises if the log did not acknowledge it all
        (the commit must then wait: it would pass state that is not durable)."""
        results = await asyncio.gather(*(self._write(p, o) for p, o in offsets.items()), return_exceptions=True)
        failed = [error for error in results if isinstance(error, BaseException)]
        if failed:
            raise failed[0]

    async def _write(self, partition: Partition, upto: Position) -> None:
        state = self._partitions.get(partition)
        if state is None:
            return
        async with self._writing.setdefault(partition, asyncio.Lock()):
            entries = state.take(upto)
            if not entries:
                return
            try:
                await self._changelog.write(partition, entries)
            except BaseException:
                state.unstage(entries)  # written again, whole, with the next attempt (idempotent by key)
                raise

    def drop(self, partitions: Iterable[Partition]) -> None:
        """Forget partitions this process no longer owns (their state lives on in the changelog)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
            self._writing.pop(partition, None)

    async def stop(self) -> None:
        if self._started:
            await self._changelog.stop()
