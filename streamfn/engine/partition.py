"""The worker of one assigned partition: its lanes, which records go to which, and how far it may commit.

With `parallelization_factor` N, up to N batches of the partition are in flight at once, one per lane; records
are routed to lanes by key (records without a key by offset), so each key's records stay in offset order. The
partition may commit up to the lowest offset any lane has not handled yet (buffered or in flight): a slow record
holds the commit and is never skipped. With N = 1 this is one lane, batches in offset order, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from streamfn.app import StreamFunction
from streamfn.engine.checkpoint import Checkpoint
from streamfn.engine.lane import Lane
from streamfn.engine.runner import FunctionRunner
from streamfn.formats.codec import is_plain
from streamfn.record import Partition, SourceRecord
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
        self.predecoded: dict[int, Any] | None = {} if decoded_again and self._filter is not None else None
        """Values the filters decoded, by offset, until their batch runs: a value is decoded once."""
        self._checkpoint = checkpoint
        self.counts = runner.stats.at(partition)
        """This partition's counters (the poller's and the filters' share of them)."""
        self.last_arrival = time.monotonic()
        """When records last arrived (or the partition was assigned): how long it has been quiet."""
        self.last_progress = self.last_arrival
        """When a batch (or filtered-out records) was last done, or records came to an idle partition: how long
        pending records have waited without the partition moving on (health's stuck partitions)."""
        self._fed_until: int | None = None
        """The offset after the last record fed: where the partition stands when every lane is empty."""
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
        self._fed_until = records[-1].offset + 1
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
            routed[(hash(record.key) if record.key is not None else record.offset) % len(lanes)].append(record)
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
        """A lane finished a batch: the partition may commit up to the lowest offset still pending anywhere."""
        self.last_progress = time.monotonic()
        pending = [offset for lane in self.lanes if (offset := lane.lowest_pending()) is not None]
        committable = min(pending) if pending else self._fed_until
        if committable is not None:
            self._checkpoint.completed(self.partition, committable)

    def applied(self) -> int | None:
        """The offset every record before which is handled (the checkpoint's), if known."""
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
