"""A partition's buffer of fetched records and the rule that cuts them into batches.

A batch is cut when it holds `batch_size` records, when its payload would pass Lambda's 6 MB limit, or when the
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
from streamfn.record import Partition, SourceRecord

BUFFER_BYTES = 2 * PAYLOAD_LIMIT_BYTES
"""Buffered bytes past which a partition is paused, whatever the record count (large records)."""

RECORD_OVERHEAD_BYTES = 200
"""What one record adds to a Lambda event beyond its base64 key and value (metadata fields, JSON syntax)."""


def event_size(record: SourceRecord) -> int:
    """The record's share of a Lambda event: base64 key and value plus fixed overhead."""
    return (
        (record.serialized_key_size + 2) // 3 * 4 + (record.serialized_value_size + 2) // 3 * 4 + RECORD_OVERHEAD_BYTES
    )


@dataclass(slots=True)
class Batch:
    """Consecutive records of one partition, handled together."""

    partition: Partition
    records: Sequence[SourceRecord]

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    @property
    def next_offset(self) -> int:
        """The offset to commit once this batch is done."""
        return self.records[-1].offset + 1

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
        # Chunks as fetched, each with its arrival time, so the window is known without a timestamp per record.
        self._chunks: deque[tuple[float, Sequence[SourceRecord]]] = deque()
        self._head = 0  # records of the first chunk already taken
        self._count = 0
        self.bytes = 0
        """Key and value bytes buffered."""
        self._high_mark = max(2 * batch_size, 1000)
        self._paused = False
        self._arrived = asyncio.Event()
        self._closed = False

    @property
    def buffered(self) -> int:
        return self._count

    def feed(self, records: Sequence[SourceRecord]) -> None:
        if self._closed or not records:
            return
        self._chunks.append((time.monotonic(), records))
        self._count += len(records)
        self.bytes += sum(r.serialized_key_size + r.serialized_value_size for r in records)
        self._arrived.set()
        if not self._paused and (self._count >= self._high_mark or self.bytes >= BUFFER_BYTES):
            self._paused = True
            self._pause()

    def close(self) -> None:
        """No more batches: a waiting `next_batch` returns None; buffered records are dropped (not committed)."""
        self._closed = True
        self._chunks.clear()
        self._count = self.bytes = 0
        self._arrived.set()

    async def next_batch(self) -> Batch | None:
        """The next batch by size, payload or window; None once closed."""
        while not self._closed:
            if self._count >= self._batch_size:
                return self._cut()
            if self._count:
                remaining = self._chunks[0][0] + self._window - time.monotonic()
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
            _, chunk = self._chunks[0]
            while self._head < len(chunk) and len(taken) < self._batch_size:
                record = chunk[self._head]
                payload += event_size(record)
                if taken and payload > PAYLOAD_LIMIT_BYTES:
                    return self._taken(taken)
                taken.append(record)
                self._head += 1
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0
        return self._taken(taken)

    def _taken(self, taken: list[SourceRecord]) -> Batch:
        self._count -= len(taken)
        self.bytes -= sum(r.serialized_key_size + r.serialized_value_size for r in taken)
        if self._paused and self._count <= self._high_mark // 2 and self.bytes <= BUFFER_BYTES // 2:
            self._paused = False
            self._resume()
        return Batch(self.partition, taken)
