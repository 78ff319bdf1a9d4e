"""Lambda's tumbling windows (`tumbling_window_in_seconds`) for Lambda-style handlers, with durable state.

As Lambda's (Kinesis and DynamoDB Streams; AWS docs "services-kinesis-windows"): each partition has one open
window at a time, by record timestamp, aligned to the epoch. A batch never spans windows: it is cut where the
window changes. Each invocation gets the event plus `window {start, end}` (ISO 8601 UTC), `state` (`{}` when the
window starts), `isFinalInvokeForWindow` and `isWindowTerminatedEarly` (and what the source's dialect adds:
Kinesis's `shardId` and `eventSourceARN`), and must return `{"state": {...}}` (beside `batchItemFailures` if it
reports them); a response without a `state` object is a failed invocation, retried under the function's policy.
Once a record of a later window arrives, or no record arrives for `window_idle_seconds` after the window's end, the
final invocation runs (`isFinalInvokeForWindow: true`, no records, the window's state); if it fails it is retried
under the function's retry policy, then the window goes to `on_failure` as `RetryAttemptsExhausted` (its final
event, with the state, and the offsets it covered); with infinite retries and no destination it is retried until it
succeeds, and the partition waits meanwhile. A state above 1 MB (or above what the changelog holds in one entry, if
less: DynamoDB's) ends the window early: a final invocation with `isWindowTerminatedEarly: true`, after which the
same window goes on with a fresh state.

When a shard ends (split, merge), the open window's final invocation runs before the end is committed, and the
children start their own windows with `{}`, as Lambda's ("When a shard ends, Lambda considers the current window to
be closed, and any child shards will start their own window in a fresh state").

Unlike Lambda's, the state is durable: it is kept in the function's changelog with the offset it covers
(streamfn.state.store), so a restarted or rebalanced worker continues the window where it was, and records already in
the state are not invoked again.

Choices where AWS is silent (docs/behaviour.md): a record whose timestamp falls in an earlier window than the
open one joins the open window (windows only move forward, as with Lambda's arrival times); a response's
`state` is taken from every successful invocation, including one that reports `batchItemFailures` (the failed
records are retried with it); outputs come only from a response's `outputs` list.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from streamfn.failures.model import Condition, FailedRecord, FailedWindow, LambdaEvent
from streamfn.outputs.emit import emitted_at, items
from streamfn.outputs.sink import encode_json
from streamfn.record import Partition, Position, Record, SourceRecord
from streamfn.state.stateful import RunSegment
from streamfn.state.store import Busy, PartitionState, StateStore, WriteOutputs
from streamfn.state.windows import Tumbling, Window
from streamfn.style import HandlerStyle

if TYPE_CHECKING:
    from streamfn.observability.stats import FunctionStats

log = logging.getLogger("streamfn.tumbling")

STATE_LIMIT_BYTES = 1024 * 1024
"""Lambda: "a maximum of 1 MB per shard. If it exceeds that size, Lambda terminates the window early"."""
WINDOW_ROOM_BYTES = 1024
"""What the metadata entry holds beside the state (the window's bounds, positions), under a changelog's limit."""

Deliver = Callable[[Partition, list[FailedRecord], "Busy"], Awaitable[None]]
"""The runner's `_deliver`: failures to the destination (or dropped, under an explicit policy)."""


class UntilDone(Protocol):
    """The runner's `until_done`: retry an action with the function's backoff until it succeeds or `limit` retries
    failed too (then the last error)."""

    def __call__(
        self,
        action: Callable[[], Awaitable[None]],
        lane: Busy,
        what: str,
        *,
        limit: int | None = None,
        held: tuple[Partition, Position] | None = None,
    ) -> Awaitable[Exception | None]: ...


@dataclass(frozen=True, slots=True)
class WindowEnd:
    """What stands for a window in its dead letter's record place (a SourceRecord): its partition, the offset of
    its last record and its end; no key, value or headers."""

    topic: str
    partition: int | str
    offset: Position
    timestamp: int
    key: bytes | None = None
    value: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_type: int = 0
    serialized_key_size: int = -1
    serialized_value_size: int = -1


class MissingState(Exception):
    """A windowed invocation's response has no `state` object: a failed invocation, as in Lambda."""


class LambdaWindows:
    def __init__(
        self,
        function: str,
        seconds: int,
        *,
        store: StateStore,
        event: LambdaEvent,
        invoke: Callable[[Any], Awaitable[Any]],
        write: WriteOutputs,
        until_done: UntilDone,
        deliver: Deliver,
        source_fields: Callable[[Partition], dict[str, Any]],
        retry_limit: int | None,
        stats: FunctionStats,
        idle_seconds: float,
    ) -> None:
        self._function = function
        self._window = Tumbling(seconds)
        self.store = store
        self._event = event
        self._invoke = invoke
        self._write = write
        self._until_done = until_done
        self._deliver = deliver
        self._source_fields = source_fields
        """What the event says of the partition (Kinesis: shardId, eventSourceARN), from the source's dialect."""
        self._retry_limit = retry_limit
        self._stats = stats
        self.idle_seconds = idle_seconds
        limit = store.value_limit
        self._state_limit = STATE_LIMIT_BYTES if limit is None else min(STATE_LIMIT_BYTES, limit - WINDOW_ROOM_BYTES)
        """Past it a window ends early: Lambda's 1 MB, or less where the changelog cannot hold it (DynamoDB)."""

    async def restore(self, partition: Partition) -> None:
        await self.store.restore(partition)

    def release(self, partitions: Sequence[Partition]) -> None:
        self.store.drop(partitions)

    payload_limited = True

    async def run(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        decoded: Sequence[Record],
        run_segment: RunSegment,
        lane: Busy,
    ) -> list[FailedRecord]:
        """Invoke a batch window by window, with a final invocation wherever a window ends."""
        state = self.store[partition]
        failures: list[FailedRecord] = []
        for window, segment in self._segments(state, self.store.uncovered(records, state.floor)):
            if _open(state) not in (None, window):
                await self._final(partition, state, lane, segment[0].offset, early=False)
            if _open(state) is None:
                state.meta = {"window": list(window), "state": {}}
            state.meta.setdefault("first", segment[0].offset)
            failures += await run_segment(segment)
            state.meta["last"] = segment[-1].offset
            state.meta["covers"] = self.store.position_after(segment[-1])
        return failures

    def _segments(
        self, state: PartitionState, records: Sequence[SourceRecord]
    ) -> list[tuple[Window, list[SourceRecord]]]:
        """The batch cut where the window changes; a record of an earlier window stays in the open one."""
        segments: list[tuple[Window, list[SourceRecord]]] = []
        current = _open(state)
        for record in records:
            window = self._window.windows(record.timestamp)[0]
            if current is not None and window.start <= current.start:
                window = current
            if not segments or segments[-1][0] != window:
                segments.append((window, []))
            segments[-1][1].append(record)
            current = window
        return segments

    def fields(self, partition: Partition, *, final: bool = False, early: bool = False) -> dict[str, Any]:
        """The tumbling-window fields of the partition's next invocation event."""
        state = self.store[partition]
        window = _open(state)
        assert window is not None
        return {
            "window": window.shown(),
            "state": copy.deepcopy(state.meta["state"]),  # the handler's own: a failed invocation may have changed it
            **self._source_fields(partition),
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": early,
        }

    async def accepted(self, partition: Partition, records: Sequence[SourceRecord], response: Any, lane: Busy) -> Any:
        """Take the state from a successful invocation's response; the response without it, for the failure
        policy and the outputs. An oversized state ends the window early."""
        window_state = _state_of(response)
        state = self.store[partition]
        state.meta["state"] = window_state
        if len(encode_json(window_state)) > self._state_limit:
            limit = "1 MB" if self._state_limit == STATE_LIMIT_BYTES else f"{self._state_limit} bytes (its changelog's)"
            log.warning(
                "function %s: %s: window state above %s: the window ends early", self._function, partition, limit
            )
            state.meta["last"] = records[-1].offset
            state.meta["covers"] = self.store.position_after(records[-1])
            await self._final(partition, state, lane, records[-1].offset, early=True)
        return {name: response[name] for name in ("outputs", "batchItemFailures") if name in response}

    async def completed(self, partition: Partition, last: SourceRecord, lane: Busy) -> None:
        self.store[partition].stage(self.store.position_after(last))

    async def idle(self, partition: Partition, applied: Position, quiet: float, lane: Busy) -> bool:
        """Run the final invocation of a window nothing arrived for since it ended. True if it ran."""
        window = _open(self.store[partition])
        if window is None or quiet < self.idle_seconds or time.time() * 1000 < window.end:
            return False
        return await self.ended(partition, applied, lane)

    async def ended(self, partition: Partition, applied: Position, lane: Busy) -> bool:
        """The open window's final invocation, now (its shard ended, or it is due); True if a window was open."""
        state = self.store[partition]
        if _open(state) is None:
            return False
        await self._final(partition, state, lane, state.meta.get("last", state.floor), early=False)
        state.stage(applied)
        return True

    async def _final(
        self, partition: Partition, state: PartitionState, lane: Busy, held: Position, *, early: bool
    ) -> None:
        """The window's final invocation under the function's retry policy (the partition waits meanwhile, as in
        Lambda, shown held at `held`); once the retries are exhausted, the window goes to on_failure (or is dropped
        under an explicit policy). Then the state is dropped (an early end keeps the window, with a fresh state,
        its records from the next one on)."""
        last = state.meta.get("last", state.floor)  # no "last": a state restored from a changelog older than it
        first = state.meta.get("first", last)  # the window's records: the final's provenance
        covers = state.meta.get("covers", state.floor)
        attempts = 0

        async def invoke_final() -> None:
            nonlocal attempts
            attempts += 1
            payload = self._event(partition, ()) | self.fields(partition, final=True, early=early)  # fresh state
            lane.busy += 1
            try:
                response = await self._invoke(payload)
                _state_of(response)
                emitting = items({k: v for k, v in response.items() if k != "state"}, HandlerStyle.LAMBDA)
                error = await self._write(
                    emitted_at(self._function, partition, first, last, (), emitting, "final", covers), lane
                )
                if error is not None:
                    raise error
            except Exception:
                self._stats.at(partition).failed_invocations += 1
                raise
            finally:
                lane.busy -= 1

        window = _open(state)
        assert window is not None
        what = f"{partition}: the final invocation of window {window.shown()['start']}"
        error = await self._until_done(invoke_final, lane, what, limit=self._retry_limit, held=(partition, held))
        counts = self._stats.at(partition)
        if error is None:
            counts.batches += 1
        else:
            event = self._event(partition, ()) | self.fields(partition, final=True, early=early)
            stands_for = WindowEnd(partition.topic, partition.partition, last, window.end)
            failed = FailedRecord(
                partition,
                stands_for,
                Condition.RETRY_ATTEMPTS_EXHAUSTED,
                attempts,
                error,
                0,
                FailedWindow(event, first, last),
            )
            await self._deliver(partition, [failed], lane)
        counts.windows_closed += 1
        state.meta = {"window": state.meta["window"], "state": {}} if early else {}


def _state_of(response: Any) -> dict[str, Any]:
    """The `state` a windowed invocation's response must hold; its absence makes the invocation a failure."""
    window_state = response.get("state") if isinstance(response, dict) else None
    if not isinstance(window_state, dict):
        raise MissingState("the response of a tumbling-window invocation must contain a 'state' object")
    return window_state


def _open(state: PartitionState) -> Window | None:
    bounds = state.meta.get("window")
    return None if bounds is None else Window(*bounds)
