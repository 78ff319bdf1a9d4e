"""MemoryReader: the engine's SourceReader over a MemoryStream, one per function of a Worker.

Lifecycle events are delivered from `fetch` (as a Kafka client runs its rebalance callbacks inside its poll), in
this order: lost leases, revoked shards, then newly assigned ones. A shard whose last record was delivered by an
earlier fetch (so the engine has it) is ended in a task of its own, so the other shards keep flowing while it
drains; once the engine has handled and committed it, the stream records its end and its children may start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any, Literal

from streamfn.connectors.memory.stream import MemoryStream
from streamfn.formats.codec import Codec, close_codecs, open_codecs
from streamfn.record import Partition, RawRecord, Record, SourceRecord
from streamfn.source import AssignmentListener

log = logging.getLogger("streamfn.memory")

MAX_RECORDS_PER_FETCH = 1_000
"""Per shard and fetch (Kinesis's GetRecords returns up to 10,000)."""


class MemoryReader:
    def __init__(
        self,
        stream: MemoryStream,
        *,
        group_id: str,
        value_codec: Codec,
        key_codec: Codec | None,
        starting_position: Literal["TRIM_HORIZON", "LATEST"],
        connection: Any,
    ) -> None:
        self.stream = stream
        self.group_id = group_id
        self.connection = connection
        """Where the source is, as events and failure records name it (opaque to the engine)."""
        self.description = f"stream {stream.name} in memory"
        self.value_codec, self.key_codec = value_codec, key_codec
        self._starting_position = starting_position
        self.accepted: set[Partition] = set()
        """Shards the engine has a worker for; only their records are delivered."""
        self.ending: set[Partition] = set()
        """Shards whose end the engine is draining (their `ended` task runs)."""
        self._next: dict[Partition, int] = {}
        """Per shard, the index of the next record to deliver."""
        self._paused: set[Partition] = set()
        self._listener: AssignmentListener | None = None
        self._wakeup = asyncio.Event()
        self._endings: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"MemoryReader({self.stream.name}, {self.group_id}, {id(self):x})"

    def wake(self) -> None:
        self._wakeup.set()

    async def connect(self) -> None: ...

    async def start(self, listener: AssignmentListener) -> None:
        await open_codecs(self.value_codec, self.key_codec)
        self._listener = listener
        self.stream.join(self.group_id, self)

    async def fetch(self, timeout: float) -> Mapping[Partition, Sequence[SourceRecord]]:
        self._wakeup.clear()
        await self._settle()
        fetched = self._available()
        if fetched:
            return fetched
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        await self._settle()
        return self._available()

    def _available(self) -> dict[Partition, Sequence[SourceRecord]]:
        fetched: dict[Partition, Sequence[SourceRecord]] = {}
        for partition in self.accepted - self._paused - self.ending:
            start = self._next[partition]
            records: list[RawRecord] = self.stream.shards[partition].records[start : start + MAX_RECORDS_PER_FETCH]
            if records:
                fetched[partition] = records
                self._next[partition] = start + len(records)
        return fetched

    async def _settle(self) -> None:
        """Tell the listener what moved since the last fetch: lost, revoked, assigned, ended."""
        listener, stream, group = self._listener, self.stream, self.stream.group(self.group_id)
        assert listener is not None
        lost = {p for p in self.accepted if group.owners.get(p) is not self}
        if lost:
            self.accepted -= lost
            self.ending -= lost
            await listener.lost(lost)
        revoked = {p for p in self.accepted - self.ending if group.target.get(p) is not self}
        if revoked:
            self.accepted -= revoked
            await listener.revoked(revoked)
            stream.release(self.group_id, revoked, self)
        assigned = {
            p: self._resume(p)
            for p in sorted(group.target.keys() - self.accepted)
            if stream.acquire(self.group_id, p, self)
        }
        if assigned:
            await listener.assigned(assigned)
            self.accepted |= set(assigned)
        for partition in self.accepted - self.ending:
            shard = stream.shards[partition]
            if shard.ended and self._next[partition] == len(shard.records):
                self.ending.add(partition)
                task = asyncio.create_task(self._end(partition), name=f"streamfn:memory:{partition}:ended")
                self._endings.add(task)
                task.add_done_callback(self._endings.discard)

    def _resume(self, partition: Partition) -> int:
        """The group's checkpoint of a shard just assigned; the starting position where it has none (committed at
        once, so it applies once per group). A split's or merge's children start at their beginning."""
        group = self.stream.group(self.group_id)
        shard = self.stream.shards[partition]
        checkpoint = group.checkpoints.get(partition)
        if checkpoint is None:
            latest = self._starting_position == "LATEST" and not shard.parents and shard.positions
            checkpoint = group.checkpoints[partition] = shard.positions[-1] if latest else 0
        self._next[partition] = shard.covered(checkpoint)
        return checkpoint

    async def _end(self, partition: Partition) -> None:
        assert self._listener is not None
        await self._listener.ended(partition)
        if partition in self.ending:  # not lost meanwhile
            self.ending.discard(partition)
            self.accepted.discard(partition)
            self.stream.finish(self.group_id, partition, self)

    def seek(self, partition: Partition, offset: int) -> None:
        self._next[partition] = self.stream.shards[partition].covered(offset)

    def pause(self, partition: Partition) -> None:
        self._paused.add(partition)

    def resume(self, partition: Partition) -> None:
        self._paused.discard(partition)
        self.wake()

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.stream.commit(self.group_id, dict(offsets), self)

    def position_after(self, record: SourceRecord | Record) -> int:
        """A checkpoint names the last record handled (Kinesis's convention)."""
        position: int = record.offset
        return position

    def lag(self, partition: Partition, committed: int) -> int | None:
        """Records in the shard past the checkpoint."""
        shard = self.stream.shards[partition]
        return len(shard.positions) - shard.covered(committed)

    async def stop(self) -> None:
        for task in list(self._endings):
            task.cancel()
        await asyncio.gather(*self._endings, return_exceptions=True)
        if self._listener is not None:
            self.stream.leave(self.group_id, self)
            self._listener = None
        await close_codecs(self.value_codec, self.key_codec)
