"""Windowed aggregations (`@app.aggregate`): records folded into per-key window accumulators, final results emitted
to the outputs when event time passes a window's end.

Per source partition: the accumulators live in the partition's durable state (streamfn.state.store), keyed by the
aggregation key and the window's start; the watermark is the largest event time seen minus `allowed_lateness`. A
window whose end is at or below the watermark is closed: its result is written to every output, and only once
every sink has acknowledged it is the window deleted from the state. A crash in between emits the same result
again (an upsert of the same row, or skipped by an exactly-once Table); a crash never loses one. A sink that
gives up keeps the window, which is emitted again with the next batch or idle check, so results are not lost
while a sink is down either.

A record for closed windows only is late: it goes to `on_failure` as `LateRecord` (or is only counted, with
`late_records="count"`). A partition with no new record for `window_idle_seconds` lets event time follow the wall
clock, so the last windows of a quiet partition close too (as Lambda closes a window after a quiet period). When a
shard ends (split, merge), its open windows close and their results are written before the end is committed; the
children's windows start from nothing (one result per shard for a window open across the reshard).

The fold runs in the event loop, a batch at a time, without a thread: it must be quick and must not block (an
accumulator is a small JSON value: dict, list, number, string). It should return a new accumulator rather than
change the one it is given, so that a fold that raises part-way leaves the window as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel

from streamfn.errors import ConfigError
from streamfn.failures.model import Condition, FailedRecord
from streamfn.outputs.emit import emitted_at
from streamfn.outputs.sink import Output
from streamfn.record import Partition, Position, Record, SourceRecord
from streamfn.state.stateful import RunSegment
from streamfn.state.store import Busy, PartitionState, StateStore, WriteOutputs
from streamfn.state.tumbling import UntilDone
from streamfn.state.windows import Hopping, Tumbling, Window, WindowSpec, epoch_ms, iso

if TYPE_CHECKING:
    from streamfn.observability.stats import FunctionStats

log = logging.getLogger("streamfn.aggregate")

LateRecords = Literal["on_failure", "count"]


class LateRecord(Exception):
    """A record whose windows had all closed when it arrived (its event time is below the watermark)."""


class AggregationError(Exception):
    """The key, the timestamp or the fold of a record raised: the record is not in any window."""


@dataclass(frozen=True)
class Aggregation:
    """What `@app.aggregate` declared, beside the fold itself."""

    key: Callable[[Record], Any]
    key_name: str
    """The result's column for the key: the field name when `key` names a field, else "key"."""
    window: WindowSpec
    timestamp: Callable[[Record], int]
    lateness_ms: int
    late_records: LateRecords


def aggregation_of(window: Any, key: Any, timestamp: Any, allowed_lateness: Any, late_records: Any) -> Aggregation:
    """What `@app.aggregate` was given, checked into an Aggregation (ConfigError naming what is wrong)."""
    if not isinstance(window, Tumbling | Hopping):
        raise ConfigError(f"window={window!r} is invalid: allowed: Tumbling(seconds) or Hopping(size, step)")
    if isinstance(key, str):
        key_of, key_name = field_getter(key), key
    elif callable(key):
        key_of, key_name = key, "key"
    else:
        raise ConfigError(f"key={key!r} is invalid: allowed: a field name of the value or a function of the record")
    if not (isinstance(timestamp, str) and timestamp) and not callable(timestamp):
        raise ConfigError(
            f"timestamp={timestamp!r} is invalid: allowed: 'record' (the record's timestamp), a field name of the "
            "value or a function of the record"
        )
    if isinstance(allowed_lateness, bool) or not isinstance(allowed_lateness, int | float) or allowed_lateness < 0:
        raise ConfigError(f"allowed_lateness={allowed_lateness!r} is invalid: allowed: seconds >= 0")
    if late_records not in ("on_failure", "count"):
        raise ConfigError(f"late_records={late_records!r} is invalid: allowed: 'on_failure' or 'count'")
    return Aggregation(
        key_of, key_name, window, timestamp_getter(timestamp), int(allowed_lateness * 1000), late_records
    )


def field_getter(name: str) -> Callable[[Record], Any]:
    """A record's value field `name`: a dict key, or an attribute of a model."""

    def get(record: Record) -> Any:
        value = record.value
        return value[name] if isinstance(value, dict) else getattr(value, name)

    return get


def record_time(record: Record) -> int:
    return record.timestamp


def timestamp_getter(timestamp: str | Callable[[Record], Any]) -> Callable[[Record], int]:
    """ "record": the record's own timestamp; a field name, or a callable: epoch ms, ISO 8601 text or a datetime."""
    if timestamp == "record":
        return record_time
    read = field_getter(timestamp) if isinstance(timestamp, str) else timestamp
    return lambda record: epoch_ms(read(record))


class Aggregator:
    """Folds one function's records into window accumulators and emits the windows that close."""

    def __init__(
        self,
        function: str,
        fold: Callable[[Any, Record], Any],
        aggregation: Aggregation,
        *,
        store: StateStore,
        write: WriteOutputs,
        until_done: UntilDone,
        stats: FunctionStats,
        idle_seconds: float,
    ) -> None:
        self._function = function
        self._fold = fold
        self._aggregation = aggregation
        self.store = store
        self._write = write
        self._until_done = until_done
        self._stats = stats
        self.idle_seconds = idle_seconds
        self._size_ms = aggregation.window.size_ms
        self._open: dict[Partition, dict[int, set[bytes]]] = {}
        """Per partition: the keys of open windows, by window end (what closing a window must find)."""

    async def restore(self, partition: Partition) -> None:
        state = await self.store.restore(partition)
        ends: dict[int, set[bytes]] = {}
        for key in state.values:
            if key[:1] == b"[":  # [key, window start]
                ends.setdefault(orjson.loads(key)[1] + self._size_ms, set()).add(key)
        self._open[partition] = ends

    def release(self, partitions: Sequence[Partition]) -> None:
        for partition in partitions:
            self._open.pop(partition, None)
        self.store.drop(partitions)

    payload_limited = False

    async def run(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        decoded: Sequence[Record],
        run_segment: RunSegment,
        lane: Busy,
    ) -> list[FailedRecord]:
        """Fold a batch (in the event loop, never through the failure policy: `run_segment` is not used)."""
        return self.fold(partition, records, decoded)

    def fields(self, partition: Partition) -> dict[str, Any]:
        """Nothing: an aggregation's fold is called with a record, never with an event."""
        return {}

    async def accepted(self, partition: Partition, records: Sequence[SourceRecord], response: Any, lane: Busy) -> Any:
        """The response as it is: an aggregation takes no state from a response."""
        return response

    def fold(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record]
    ) -> list[FailedRecord]:
        """Fold a batch (`decoded`: its records that decoded) into its windows; returns the records that are late
        or could not be folded, for `on_failure`."""
        state = self.store[partition]
        ends = self._open[partition]
        aggregation = self._aggregation
        key_of, time_of, windows_of = aggregation.key, aggregation.timestamp, aggregation.window.windows
        lateness, fold, values = aggregation.lateness_ms, self._fold, state.values
        seen: int | None = state.meta.get("seen")
        failed: list[tuple[Record, Condition, Exception]] = []
        after = self.store.position_after
        decoded = self.store.uncovered(decoded, state.floor)  # replayed after a restore: already in the state
        replaying = bool(decoded) and after(decoded[0]) <= state.replay_until
        """Right after a restore, records an interrupted checkpoint already wrote into some keys come again."""
        for record in decoded:
            try:
                ts = time_of(record)
                key = key_of(record)
                if seen is None or ts > seen:
                    seen = ts
                watermark = seen - lateness
                open_windows = [w for w in windows_of(ts) if w.end > watermark]
                if not open_windows:
                    self._stats.at(partition).late += 1
                    if aggregation.late_records == "on_failure":
                        late = LateRecord(f"event time {iso(ts)} is in windows closed at watermark {iso(watermark)}")
                        failed.append((record, Condition.LATE_RECORD, late))
                    continue
                for window in open_windows:
                    name = orjson.dumps([key, window.start])
                    if replaying and state.seen(after(record), name):
                        continue
                    accumulator = values.get(name)
                    state.set(name, fold(accumulator, record))
                    if accumulator is None:  # a new window: indexed by its end, for closing
                        ends.setdefault(window.end, set()).add(name)
            except Exception as error:
                failed.append(
                    (record, Condition.AGGREGATION_ERROR, AggregationError(f"{type(error).__name__}: {error}"))
                )
        state.meta["seen"] = seen
        if not failed:
            return []
        by_offset = {r.offset: r for r in records}
        return [FailedRecord(partition, by_offset[r.offset], c, 0, e, len(records)) for r, c, e in failed]

    async def completed(self, partition: Partition, last: SourceRecord, lane: Busy) -> None:
        """After a batch (`last`: its last record): emit the windows the watermark closed, then stage the state for
        the next commit."""
        state = self.store[partition]
        state.meta["last"] = last.offset
        state.meta["covers"] = self.store.position_after(last)
        seen = state.meta.get("seen")
        if seen is not None:
            await self._close(partition, state, seen - self._aggregation.lateness_ms, lane)
        state.stage(self.store.position_after(last))

    async def idle(self, partition: Partition, applied: Position, quiet: float, lane: Busy) -> bool:
        """A partition without records for `idle_seconds`: event time follows the wall clock, closing the windows
        it has passed. True if any closed."""
        ends = self._open.get(partition)
        now = int(time.time() * 1000)
        watermark = now - self._aggregation.lateness_ms
        if quiet < self.idle_seconds or not ends or min(ends) > watermark:
            return False
        state = self.store[partition]
        state.meta["seen"] = max(now, state.meta.get("seen") or now)
        await self._close(partition, state, watermark, lane)
        state.stage(applied)
        return True

    async def ended(self, partition: Partition, applied: Position, lane: Busy) -> bool:
        """The partition's shard ended: every window still open on it closes now, whatever the watermark, and its
        result is written (a sink that gives up is retried with the function's backoff until it takes them: the
        shard's end, and its children, wait). The children fold their records into windows of their own, from
        nothing, as Lambda's tumbling windows start fresh in child shards. True if any window closed."""
        ends = self._open.get(partition)
        if not ends:
            return False
        state, last_end = self.store[partition], max(ends)

        async def close_all() -> None:
            error = await self._close(partition, state, last_end, lane)
            if error is not None:
                raise error

        what = f"{partition}: writing the results of the windows its shard's end closed"
        await self._until_done(close_all, lane, what, held=(partition, state.meta.get("last", state.floor)))
        state.stage(applied)
        return True

    async def _close(self, partition: Partition, state: PartitionState, watermark: int, lane: Busy) -> Exception | None:
        """Emit the windows `watermark` closed; their results name the position of the last record folded. The
        error of a write that gave up (the windows stay open), else None."""
        ends = self._open[partition]
        closing = sorted(end for end in ends if end <= watermark)
        if not closing:
            return None
        names = [name for end in closing for name in sorted(ends[end])]
        results = [self._result(name, state.values[name]) for name in names]
        last = state.meta.get("last", state.floor)  # no "last": a state restored from a changelog older than it
        covers = state.meta.get("covers", state.floor)
        error = await self._write(emitted_at(self._function, partition, last, last, (), results, covers=covers), lane)
        if error is not None:
            log.error(
                "function %s: %s: writing %d window results failed: %r; the windows stay open and are emitted again",
                self._function,
                partition,
                len(results),
                error,
            )
            return error
        for end in closing:
            del ends[end]
        for name in names:
            state.delete(name)
        self._stats.at(partition).windows_closed += len(names)
        return None

    def _result(self, name: bytes, accumulator: Any) -> Output:
        """A closed window's row: the key, the window's bounds, then the accumulator's fields (or `value`)."""
        key, start = orjson.loads(name)
        window = Window(start, start + self._size_ms)
        row: dict[str, Any] = {self._aggregation.key_name: key, "window_start": iso(window.start)}
        row["window_end"] = iso(window.end)
        if isinstance(accumulator, BaseModel):
            accumulator = accumulator.model_dump()
        if isinstance(accumulator, dict):
            row.update(accumulator)
        else:
            row["value"] = accumulator
        return Output(row, key=str(key))
