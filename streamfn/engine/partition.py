"""The worker of one assigned partition: its lanes, which records go to which, and how far it may commit.

With `parallelization_factor` N, up to N batches of the partition are in flight at once, one per lane; records
are routed to lanes by key (records without a key by position), so each key's records stay in order. The
partition may commit everything before the lowest position any lane has not handled yet (buffered or in flight):
a slow record holds the commit and is never skipped. With N = 1 this is one lane, batches in order, one at a time.

Positions are the source's and only compared: the checkpoint value covering "everything before the lowest pending
record" is the reader's `position_after` of the record fed just before it, found among the fetched chunks kept
until they are covered (a bisection per batch, never work per record).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from typing import Any

from streamfn.app import StreamFunction
from streamfn.engine.checkpoint import Checkpoint
from streamfn.engine.lane import Lane
from streamfn.engine.runner import FunctionRunner
from streamfn.formats.codec import is_plain
from streamfn.record import Partition, Position, SourceRecord
from streamfn.source import SourceReader
from streamfn.style import HandlerStyle


class PartitionWorker:
    def __init__(
        self,
        function: StreamFunction,
        partition: Partition,
        *,
        reader: SourceReader,
        runner: FunctionRunner,
        checkpoint: Checkpoint,
    ) -> None:
        self.function = function
        self.partition = partition
        self.reader = reader
        self.runner = runner
        self.stopping = False
        self._filter = function.config.filter_criteria
        codec = reader.value_codec
        native = function.style is HandlerStyle.NATIVE
        self._decode = codec.decode if not is_plain(codec) or (native and codec.name == "json") else None
        """Filters read decoded values: Avro must be decoded for them; JSON is decoded once for a native handler."""
        decoded_again = native or not is_plain(codec)  # the runner decodes these values (Lambda-style: to validate)
        self.predecoded: dict[Position, Any] | None = {} if decoded_again and self._filter is not None else None
        """Values the filters decoded, by position, until their batch runs: a value is decoded once."""
        self._checkpoint = checkpoint
        self.counts = runner.stats.at(partition)
        """This partition's counters (the poller's and the filters' share of them)."""
        self.last_arrival = time.monotonic()
        """When records last arrived (or the partition was assigned): how long it has been quiet."""
        self.last_progress = self.last_arrival
        """When a batch (or filtered-out records) was last done, or records came to an idle partition: how long
        pending records have waited without the partition moving on (health's stuck partitions)."""
        self._fed: deque[Sequence[SourceRecord]] = deque()
        """The chunks fed, as fetched (filtered-out records included), oldest first, until every record of the
        oldest is covered by the commit point; `_head` of the oldest are covered already."""
        self._head = 0
        self._drained: asyncio.Event | None = None
        """Set once the partition is idle, while `drained()` waits for it (a shard that ended)."""
        self._holding: set[int] = set()
        """Lanes whose buffers are full: the partition stays paused while any is."""
        self.lanes = [Lane(self, index) for index in range(function.config.parallelization_factor)]

    @property
    def idle(self) -> bool:
        return all(lane.idle for lane in self.lanes)

    @property
    def buffered(self) -> int:
        return sum(lane.buffer.buffered for lane in self.lanes)

    @property
    def in_flight(self) -> int:
        """Records fetched and not done yet: buffered, or in a batch being invoked or completed."""
        return self.buffered + sum(len(batch.records) for lane in self.lanes for batch in list(lane.in_flight))

    def stuck_for(self, now: float) -> float:
        """How long records have been pending without the partition moving on (0 when it has nothing pending)."""
        return 0.0 if self.idle else now - self.last_progress

    @property
    def buffered_bytes(self) -> int:
        return sum(lane.buffer.bytes for lane in self.lanes)

    def feed(self, records: Sequence[SourceRecord]) -> None:
        if self.stopping or not records:
            return
        now = self.last_arrival = time.monotonic()
        if self.idle:  # nothing was waiting: the partition has not been held up so far
            self.last_progress = now
        self._fed.append(records)
        if self._filter is None:
            self._route(records)
            return
        kept = self._matching(records)
        self._route(kept)
        if len(kept) < len(records):
            self.counts.filtered_out += len(records) - len(kept)
            # What was filtered out is done: it may be committed once nothing before it waits. Only now that the
            # kept records are in the lanes: before, an empty lane would let the commit pass them.
            self.lane_done()

    def _route(self, records: Sequence[SourceRecord]) -> None:
        lanes = self.lanes
        if len(lanes) == 1:
            lanes[0].buffer.feed(records)
            return
        routed: list[list[SourceRecord]] = [[] for _ in lanes]
        for record in records:
            routed[hash(record.key if record.key is not None else record.offset) % len(lanes)].append(record)
        for lane, chunk in zip(lanes, routed, strict=True):
            lane.buffer.feed(chunk)

    def _matching(self, records: Sequence[SourceRecord]) -> list[SourceRecord]:
        """The records a filter matches, as each arrives (so a batch fills with matching records, as Lambda's).

        A format with a schema (Avro) is decoded for the filters (its schemas were resolved by the poller); a value
        that does not decode is kept, so that it is routed as a DeserializationError rather than silently lost."""
        matches = self._filter.matches
        decode = self._decode
        if decode is None:
            return [r for r in records if matches(r)]
        kept = []
        predecoded = self.predecoded
        for r in records:
            try:
                decoded = decode(r.value)
            except Exception:
                kept.append(r)
                continue
            if matches(r, decoded if isinstance(decoded, dict) else None):
                kept.append(r)
                if predecoded is not None:
                    predecoded[r.offset] = decoded
        return kept

    def lane_done(self) -> None:
        """A lane finished a batch: the partition may commit every record before the lowest one still pending."""
        self.last_progress = time.monotonic()
        pending = [offset for lane in self.lanes if (offset := lane.lowest_pending()) is not None]
        lowest = min(pending) if pending else None
        fed, head, covered, last = self._fed, self._head, 0, None
        while fed and (lowest is None or fed[0][-1].offset < lowest):  # chunks handled to the end
            covered += len(fed[0]) - head
            last, head = fed.popleft()[-1], 0
        if fed and lowest is not None:  # the chunk holding the lowest pending record: the records before it
            chunk = fed[0]
            index = bisect_left(chunk, lowest, lo=head, key=_position)
            if index > head:
                covered += index - head
                last, head = chunk[index - 1], index
        self._head = head
        if last is not None:
            self._checkpoint.completed(self.partition, self.reader.position_after(last), covered)
        if self._drained is not None and lowest is None:
            self._drained.set()

    async def drained(self) -> None:
        """Return once every record fed is handled (and reported to the checkpoint)."""
        while not self.idle:
            self._drained = asyncio.Event()
            await self._drained.wait()

    async def ended(self) -> None:
        """The shard ended and every record fed is handled (`drained`): a stateful function closes what is open on
        it (a tumbling window's final invocation, an aggregation's windows), once its state is restored. Stateful
        functions have one lane."""
        lane = self.lanes[0]
        await lane.restored.wait()
        applied = self.applied()
        if applied is not None:
            await self.runner.ended(self.partition, applied, lane)

    def applied(self) -> Position | None:
        """The checkpoint value covering every record handled so far in order (the checkpoint's), if known."""
        return self._checkpoint.done(self.partition)

    def hold(self, lane: int) -> None:
        if not self._holding:
            self.reader.pause(self.partition)
        self._holding.add(lane)

    def release(self, lane: int) -> None:
        self._holding.discard(lane)
        if not self._holding:
            self.reader.resume(self.partition)

    async def stop(self, grace: float) -> None:
        """Take no new batch; let invocations under way finish within `grace` seconds; never commit after."""
        self.stopping = True
        await asyncio.gather(*(lane.stop(grace) for lane in self.lanes))


def _position(record: SourceRecord) -> Position:
    return record.offset
