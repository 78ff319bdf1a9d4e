"""A partition's buffer of fetched records and the rule that cuts them into batches.

A batch is cut when it holds `batch_size` records, when its payload (headers included) would pass Lambda's 6 MB
limit (a record that passes it alone is a batch of its own, which the runner routes to on_failure), or when the
batching window, which starts when the batch's first record arrived (Lambda's rule for Kafka), has elapsed.
The buffer is bounded: past its high mark (records or bytes) it asks the reader to pause the partition, and resumes
it once the worker has drained it below half, so a slow handler holds memory flat instead of letting fetches pile
up. The bound is the high mark plus what one fetch can return for a partition (the client's per-partition fetch
limit, 1 MiB by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamfn.config import PAYLOAD_LIMIT_BYTES
from streamfn.record import Partition, Position, SourceRecord

BUFFER_BYTES = 2 * PAYLOAD_LIMIT_BYTES
"""Buffered bytes past which a partition is paused, whatever the record count (large records)."""

RECORD_OVERHEAD_BYTES = 200
"""What one record adds to a Lambda event beyond its base64 key and value (metadata fields, JSON syntax)."""


HEADER_VALUE_WEIGHT = 3
"""A header value's byte weighs three key or value bytes: the event spells it as a decimal number and a comma (up to
4 characters, as 3 bytes take in base64)."""
HEADER_OVERHEAD_BYTES = 6
"""What one header adds beyond its name and value (JSON syntax), before base64's 4/3 is applied to the whole."""


def raw_size(record: SourceRecord) -> int:
    """What a record weighs in the buffer and, once `event_size` applies base64's 4/3, in an event: its key and
    value bytes, and its headers' names and values (weighted as the event spells them)."""
    size = record.serialized_key_size + record.serialized_value_size
    if record.headers:  # most records have none: no loop for them
        size += sum(
            len(name) + HEADER_VALUE_WEIGHT * len(value or b"") + HEADER_OVERHEAD_BYTES
            for name, value in record.headers
        )
    return size


def event_size(raw: int) -> int:
    """A record's share of a Lambda event, from its `raw_size`: base64 of key and value (headers weighted as
    spelled), plus fixed overhead."""
    return (raw + 4) * 4 // 3 + 1 + RECORD_OVERHEAD_BYTES


@dataclass(slots=True)
class _Chunk:
    """Records as one fetch delivered them, with what batching needs to know about them as a whole."""

    arrival: float
    records: Sequence[SourceRecord]
    raw_bytes: int
    largest_event: int
    """The event size of the chunk's largest record: a cheap bound that spares a size check per record."""


@dataclass(slots=True)
class Batch:
    """Consecutive records of one partition, handled together."""

    partition: Partition
    records: Sequence[SourceRecord]

    @property
    def first_offset(self) -> Position:
        return self.records[0].offset

    @property
    def last_offset(self) -> Position:
        return self.records[-1].offset

    def __str__(self) -> str:
        return f"{self.partition} offsets {self.first_offset}-{self.last_offset}"


class PartitionBuffer:
    """Fetched records of one partition waiting to be batched, in arrival order."""

    def __init__(
        self,
        partition: Partition,
        *,
        batch_size: int,
        window: float,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self.partition = partition
        self._batch_size = batch_size
        self._window = window
        self._pause = pause
        self._resume = resume
        self._chunks: deque[_Chunk] = deque()
        self._head = 0  # records of the first chunk already taken
        self._count = 0
        self.bytes = 0
        """Bytes buffered, by `raw_size` (a chunk counts whole until its last record is taken)."""
        self._high_mark = max(2 * batch_size, 1000)
        self._paused = False
        self._arrived = asyncio.Event()
        self._closed = False
        self._dropped_from: Position | None = None

    @property
    def buffered(self) -> int:
        return self._count

    @property
    def first_offset(self) -> Position | None:
        """The offset of the oldest record received and not yet handed out in a batch, if any.

        Records dropped by `close` still count: they were never handled, so no commit may pass them.
        """
        if self._chunks:
            return self._chunks[0].records[self._head].offset
        return self._dropped_from

    def feed(self, records: Sequence[SourceRecord]) -> None:
        if self._closed or not records:
            return
        sizes = [raw_size(r) for r in records]
        chunk = _Chunk(time.monotonic(), records, sum(sizes), event_size(max(sizes)))
        self._chunks.append(chunk)
        self._count += len(records)
        self.bytes += chunk.raw_bytes
        self._arrived.set()
        if not self._paused and (self._count >= self._high_mark or self.bytes >= BUFFER_BYTES):
            self._paused = True
            self._pause()

    def close(self) -> None:
        """No more batches: a waiting `next_batch` returns None; buffered records are dropped (not committed)."""
        self._closed = True
        self._dropped_from = self.first_offset
        self._chunks.clear()
        self._count = self.bytes = 0
        self._arrived.set()

    async def next_batch(self) -> Batch | None:
        """The next batch by size, payload or window; None once closed."""
        while not self._closed:
            if self._count >= self._batch_size:
                return self._cut()
            if self._count:
                remaining = self._chunks[0].arrival + self._window - time.monotonic()
                if remaining <= 0:
                    return self._cut()
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            else:
                self._arrived.clear()
                await self._arrived.wait()
        return None

    def _cut(self) -> Batch:
        taken: list[SourceRecord] = []
        payload = 0
        while self._chunks and len(taken) < self._batch_size:
            chunk = self._chunks[0]
            wanted = min(self._batch_size - len(taken), len(chunk.records) - self._head)
            if payload + wanted * chunk.largest_event <= PAYLOAD_LIMIT_BYTES:  # all fit: no per-record check
                taken.extend(chunk.records[self._head : self._head + wanted])
                payload += wanted * chunk.largest_event
                self._head += wanted
            else:
                while self._head < len(chunk.records) and len(taken) < self._batch_size:
                    size = event_size(raw_size(chunk.records[self._head]))
                    if taken and payload + size > PAYLOAD_LIMIT_BYTES:
                        return self._taken(taken)
                    taken.append(chunk.records[self._head])
                    payload += size
                    self._head += 1
            if self._head == len(chunk.records):
                self._chunks.popleft()
                self.bytes -= chunk.raw_bytes
                self._head = 0
        return self._taken(taken)

    def _taken(self, taken: list[SourceRecord]) -> Batch:
        self._count -= len(taken)
        if self._paused and self._count <= self._high_mark // 2 and self.bytes <= BUFFER_BYTES // 2:
            self._paused = False
            self._resume()
        return Batch(self.partition, taken)
