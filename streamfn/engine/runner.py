"""Running one batch of a function to the end: decode, invoke under the failure policy, write the outputs, route
what still fails to `on_failure`. Only then may the batch's offsets be committed.

One runner per function and poller, shared by its partitions' lanes (and used directly by `Function(...)`
outputs, which run another function's batch inside the calling lane). The order of the steps is the guarantee:
outputs are acknowledged by every sink, then failures by the destination, then the lane reports the batch done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
)

from streamfn.app import StreamFunction
from streamfn.config import PAYLOAD_LIMIT_BYTES, FunctionConfig
from streamfn.context import function_arn
from streamfn.dialect import Dialect
from streamfn.engine.batch import event_size, raw_size
from streamfn.engine.handler import InvocationTimeout, Invoker
from streamfn.failures.log import FailureLog
from streamfn.failures.model import (
    BatchItemFailures,
    Condition,
    DestinationWriter,
    FailedRecord,
    FailureOrigin,
    PayloadSizeExceeded,
    StopProcessing,
)
from streamfn.failures.recovery import Recovery
from streamfn.formats.codec import Codec, is_plain, value_validator
from streamfn.observability.logs import bind, unbind
from streamfn.observability.stats import FunctionStats
from streamfn.observability.telemetry import NO_TELEMETRY, FunctionTelemetry
from streamfn.observability.tracing import finish, headers_of, trace_fields, within
from streamfn.outputs.delivery import Outputs
from streamfn.outputs.emit import emitted_at, items, trace_context
from streamfn.outputs.sink import Emitted, SinkContext
from streamfn.record import TIMESTAMP_TYPES, Partition, Position, Record, SourceRecord
from streamfn.state.aggregate import Aggregator
from streamfn.state.changelog import Changelog
from streamfn.state.stateful import Stateful
from streamfn.state.store import Busy, PositionAfter, StateStore
from streamfn.state.tumbling import LambdaWindows
from streamfn.style import HandlerStyle

log = logging.getLogger("streamfn.runner")

FAILED_OUTCOMES = ("partial", "error", "timeout")
"""How an invocation ended when its records count as failed invocation events."""

Invocation = tuple[Sequence[SourceRecord], list[Emitted]]
"""The records of one successful invocation and the outputs it emitted."""


@dataclass(eq=False, slots=True)
class Hold:
    """A partition that cannot move on: records failed with nowhere to go and no policy to drop them (or a
    window's final invocation keeps failing), retried each round. Health and the live view show it."""

    partition: Partition
    offset: Position
    """The lowest position held: the partition's commit never covers it."""
    reason: str
    since: float = field(default_factory=time.monotonic)
    rounds: int = 0


@dataclass(slots=True)
class Invoked:
    """A batch whose invocations are over: what it emitted and what failed, not yet written anywhere."""

    partition: Partition
    records: Sequence[SourceRecord]
    invocations: list[Invocation]
    failures: list[FailedRecord]


class FunctionRunner:
    def __init__(
        self,
        function: StreamFunction,
        *,
        stats: FunctionStats,
        dialect: Dialect,
        connection: Any,
        value_codec: Codec,
        key_codec: Codec | None,
        changelog: Changelog | None = None,
        position_after: PositionAfter | None = None,
        telemetry: FunctionTelemetry = NO_TELEMETRY,
    ) -> None:
        self.function = function
        self.stats = stats
        self._position_after = position_after
        event = dialect.lambda_event(connection, value_codec, key_codec)
        self.origin = FailureOrigin(function.name, function_arn(function.name), event, dialect.batch_info(connection))
        """What its dead letters say of where they came from (the source's event and batch-info block)."""
        self._window_fields = partial(dialect.window_fields, connection)
        self._native = function.style is not HandlerStyle.LAMBDA
        self._value_codec = value_codec
        self._key_codec = key_codec
        self._resolves = not (is_plain(value_codec) and is_plain(key_codec))
        """A format with a schema: resolve the batch's schemas first; Lambda-style payloads are validated too."""
        model = function.config.value_model
        self._validate = value_validator(value_codec, model) if model is not None else None
        """A function's `value_model` check of each decoded value (None: no model)."""
        self._decode_value = _decoder(value_codec.decode, self._validate)
        self._decode_key = key_codec.decode if key_codec is not None else None
        self._invoker = Invoker(
            function.name, function.handler, function.config.timeout, function.config.reports_item_failures
        )
        backoff = function.config.backoff
        self._retrying = AsyncRetrying(wait=lambda state: backoff.delay(state.attempt_number))
        self._recovery = Recovery(function.name, function.config, self.delay, stats, dialect.failed_item)
        self._outputs = Outputs(function.name, function.outputs, telemetry.instruments)
        self._tracer = telemetry.tracer
        self._instruments = telemetry.instruments
        self._destination = function.config.on_failure
        self._dead_letters: DestinationWriter | None = None
        """The destination opened for this function (by `open`)."""
        self._drop_policy = drop_policy(function.config)
        self._failure_log = FailureLog(function.name)
        self.holds: set[Hold] = set()
        """What the function's lanes hold now (read by the health probes and the live view)."""
        self.stateful = self._stateful(changelog, position_after)
        """Aggregations and tumbling windows: the partitions' durable state and what runs on it."""
        self._payload_limited = self.stateful is None or self.stateful.payload_limited
        self._closing: dict[Partition, asyncio.Lock] = {}
        """Per partition: what closes windows outside a batch (an idle check, a shard's end) runs one at a time."""

    def _stateful(self, changelog: Changelog | None, position_after: PositionAfter | None) -> Stateful | None:
        function, config = self.function, self.function.config
        if not function.stateful:
            return None
        if changelog is None or position_after is None:
            raise ValueError(f"function {function.name} keeps state: it needs a changelog and its source's positions")
        store = StateStore(function.name, changelog, position_after)
        if function.aggregation is not None:
            return Aggregator(
                function.name,
                function.handler,
                function.aggregation,
                store=store,
                write=self._write_emitted,
                until_done=self.until_done,
                stats=self.stats,
                idle_seconds=config.window_idle_seconds,
            )
        return LambdaWindows(
            function.name,
            config.tumbling_window_in_seconds,
            store=store,
            event=self.origin.event,
            invoke=self._invoker.invoke,
            write=self._write_emitted,
            until_done=self.until_done,
            deliver=self._deliver,
            source_fields=self._window_fields,
            retry_limit=config.retry_limit,
            stats=self.stats,
            idle_seconds=config.window_idle_seconds,
        )

    async def open(self, context: SinkContext) -> None:
        """Start the destination and open the sinks (before any batch runs)."""
        if self._destination is not None:
            self._dead_letters = await self._destination.open_destination(context.connection)
            if self.function.config.maximum_retry_attempts == -1:
                log.info(
                    "function %s: infinite retries with an on_failure destination: capped at %d retries (as Lambda)",
                    self.function.name,
                    self.function.config.retry_limit,
                )
        await self._outputs.open(context)

    async def close(self) -> None:
        self._failure_log.flush()
        if self.stateful is not None:
            await self.stateful.store.stop()
        await self._outputs.close()
        if self._dead_letters is not None:
            await self._dead_letters.close()
        self._invoker.close()

    async def restore(self, partition: Partition) -> None:
        """Rebuild a newly assigned partition's state (a stateful function's), before its first batch."""
        if self.stateful is not None:
            await self.stateful.restore(partition)

    def release(self, partitions: Sequence[Partition]) -> None:
        """Forget the state of partitions given up (after their last commit)."""
        if self.stateful is not None:
            self.stateful.release(partitions)
        for partition in partitions:
            self._closing.pop(partition, None)

    async def stored_positions(self, partitions: Sequence[Partition]) -> dict[Partition, Position]:
        """processing_guarantee="exactly_once": how far the outputs' own stored offsets say each partition is done
        (a stateless function resumes there; a stateful one replays into its state and lets the sinks skip)."""
        if self.function.config.processing_guarantee != "exactly_once" or self.stateful is not None:
            return {}
        return await self._outputs.positions(partitions)

    async def idle(self, partition: Partition, applied: Position, quiet: float, lane: Busy) -> None:
        """A stateful function's partition without records for `quiet` seconds: close what is due, and write the
        state at once (no commit follows, the offset has not moved)."""
        if self.stateful is not None:
            async with self._closing.setdefault(partition, asyncio.Lock()):
                if await self.stateful.idle(partition, applied, quiet, lane):
                    await self.stateful.store.write({partition: applied})

    async def ended(self, partition: Partition, applied: Position, lane: Busy) -> None:
        """A stateful function's partition whose shard ended, every record handled: close what is open on it and
        write the state at once (the commit of the end may have nothing left to move)."""
        if self.stateful is not None:
            async with self._closing.setdefault(partition, asyncio.Lock()):  # not alongside an idle check's closing
                if await self.stateful.ended(partition, applied, lane):
                    await self.stateful.store.write({partition: applied})

    async def run(self, partition: Partition, records: Sequence[SourceRecord], lane: Busy) -> None:
        """Run the batch to the end: every record succeeded (outputs written), or failed and was delivered."""
        await self.complete(await self.invoke(partition, records, lane), lane)

    async def invoke(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        lane: Busy,
        predecoded: dict[Position, Any] | None = None,
    ) -> Invoked:
        """The first half of a batch: decode, and invoke under the failure policy until each record succeeded or
        failed for good. Nothing is written yet.

        `predecoded`: values already decoded (by the filters), by offset; taken out as they are used."""
        if len(records) == 1 and self._payload_limited:  # only a record alone can be too large
            size = event_size(raw_size(records[0]))
            if size > PAYLOAD_LIMIT_BYTES:
                error = PayloadSizeExceeded(f"the record makes a {size}-byte payload, above {PAYLOAD_LIMIT_BYTES}")
                failure = FailedRecord(partition, records[0], Condition.MAXIMUM_PAYLOAD_SIZE_EXCEEDED, 0, error, 1)
                return Invoked(partition, records, [], [failure])
        if self._resolves:
            await self._resolve(records)
        decoded, failures = self._decode_batch(partition, records, predecoded)
        invocable = records
        if failures:  # only what decoded reaches the handler
            failed = {f.record.offset for f in failures}
            invocable = [r for r in records if r.offset not in failed]
        invocations: list[Invocation] = []
        invoke = partial(self._invoke, partition, decoded, lane, invocations)
        if self.stateful is not None:  # an aggregation folds; tumbling windows run the policy segment by segment
            segment = partial(self._recovery.run, partition, invoke=invoke)
            failures += await self.stateful.run(partition, invocable, decoded, segment, lane)
        elif invocable:
            failures += await self._recovery.run(partition, invocable, invoke)
        return Invoked(partition, records, invocations, failures)

    async def complete(self, invoked: Invoked, lane: Busy) -> None:
        """The second half: write the outputs to every sink, then the failures to the destination (dropped under
        an explicit policy; held and retried with neither). Once it returns, the batch may be committed."""
        failures = await self._written(invoked, lane)
        if failures and self._destination is None and self._drop_policy is None:
            await self._hold(invoked.partition, failures, lane)
        elif failures:
            await self._deliver(invoked.partition, failures, lane)
        if self.stateful is not None:
            await self.stateful.completed(invoked.partition, invoked.records[-1], lane)

    async def _written(self, invoked: Invoked, lane: Busy) -> list[FailedRecord]:
        """Write what the invocations emitted; the records that failed (in invocation or in writing)."""
        failures = invoked.failures
        if invoked.invocations:
            failures += await self._write_outputs(invoked.partition, invoked.invocations, failures, lane)
        self.stats.at(invoked.partition).handled += len(invoked.records) - len(failures)
        return failures

    async def _hold(self, partition: Partition, failures: list[FailedRecord], lane: Busy) -> None:
        """Failures with no destination and no explicit policy to drop them: nothing may pass them, so they hold
        the partition (as a poison record does on Lambda) and are run again through the normal path each round,
        with the function's backoff, until they succeed (a registry or a sink that was down is back) or the lane
        stops (left uncommitted for the next owner). Each round logs which record and why."""
        hold = Hold(partition, failures[0].record.offset, "")
        self.holds.add(hold)
        try:
            while failures:
                failures.sort(key=lambda f: f.record.offset)
                first = failures[0]
                hold.offset, hold.reason = first.record.offset, f"{first.condition}: {first.error!r}"
                hold.rounds += 1
                delay = self.delay(hold.rounds)
                log.warning(
                    "function %s: %s offset %d held (%s: %r), %d record(s) in all: no on_failure destination and no "
                    "drop policy (maximum_retry_attempts or maximum_record_age_in_seconds); round %d, retrying in "
                    "%.2f s",
                    self.function.name,
                    partition,
                    first.record.offset,
                    first.condition,
                    first.error,
                    len(failures),
                    hold.rounds,
                    delay,
                )
                await asyncio.sleep(delay)
                if lane.stopping:
                    raise StopProcessing
                failures = await self._written(await self.invoke(partition, [f.record for f in failures], lane), lane)
        finally:
            self.holds.discard(hold)

    async def _invoke(
        self,
        partition: Partition,
        decoded: list[Record],
        lane: Busy,
        invocations: list[Invocation],
        records: Sequence[SourceRecord],
        attempt: int,
        request_id: str,
    ) -> Any:
        """One invocation with these records of the batch (the `attempt`-th for them), as request `request_id`;
        returns the response for the failure policy to read. Its log lines, span and histograms say which records
        and which request it was."""
        if lane.stopping:
            raise StopProcessing
        if not self._native:
            payload: Any = self.origin.event(partition, records, decoded)  # decoded: only for schema formats
            if self.stateful is not None:
                payload |= self.stateful.fields(partition)
        elif len(records) == len(decoded):  # the whole batch: the decoded records, in offset order
            payload = decoded
        else:  # a part of it, after a partial failure or a bisection
            wanted = {r.offset for r in records}
            payload = [record for record in decoded if record.offset in wanted]
        counts = self.stats.at(partition)
        counts.invoked += len(records)
        span = None if self._tracer is None else self._tracer.start(partition, records, attempt, request_id)
        logged = bind(
            function=self.function.name,  # a chained function runs in its caller's lane
            offsets=f"{records[0].offset}-{records[-1].offset}",
            request_id=request_id,
            **({} if span is None else trace_fields(span)),
        )
        current = nullcontext() if span is None else within(span)
        started = time.perf_counter()
        outcome, error = "cancelled", None  # unless it returns or raises
        lane.busy += 1
        try:
            with current:  # the handler's own spans are the invocation's children
                response = await self._invoker.invoke(payload, request_id)
            if self.stateful is not None:
                response = await self.stateful.accepted(partition, records, response, lane)
            outcome = _outcome(response)
        except BatchItemFailures as reported:  # a native handler's partial failure, raised
            response, outcome = reported, "partial"
        except Exception as failed:
            counts.failed_invocations += 1
            outcome, error = ("timeout" if isinstance(failed, InvocationTimeout) else "error"), failed
            raise
        finally:
            lane.busy -= 1
            unbind(logged)
            if outcome in FAILED_OUTCOMES:  # Lambda's FailedInvokeEventCount counts partial responses too
                counts.failed_invoked += len(records)
            if span is not None:
                finish(span, outcome, error)
            if self._instruments is not None:
                self._instruments.invocation(partition, len(records), time.perf_counter() - started, outcome)
        counts.batches += 1
        if not self._outputs:
            return response
        if emitting := items(response, self.function.style):
            trace = trace_context(records) if span is None else headers_of(span)
            first, last = records[0].offset, records[-1].offset
            covers = None if self._position_after is None else self._position_after(records[-1])
            emitted = emitted_at(self.function.name, partition, first, last, trace, emitting, covers=covers)
            invocations.append((records, emitted))
        # What the failure policy reads: a partial batch response; the outputs are not one.
        if self._native:
            return response if isinstance(response, BatchItemFailures) else None
        return response if isinstance(response, dict) else None

    async def _write_outputs(
        self, partition: Partition, invocations: list[Invocation], failures: list[FailedRecord], lane: Busy
    ) -> list[FailedRecord]:
        """Write every output of the batch; if a sink gives up, the records that emitted them have failed."""
        outputs = [output for _, emitted_ in invocations for output in emitted_]
        error = await self._write_emitted(outputs, lane)
        if error is None:
            return []
        log.error(
            "function %s: %s: giving up writing %d outputs: %r",
            self.function.name,
            partition,
            len(outputs),
            error,
        )
        failed = {f.record.offset for f in failures}
        counts: dict[int, int] = {}
        emitters: list[tuple[SourceRecord, int]] = []
        for records, _ in invocations:
            for record in records:
                if record.offset not in failed:
                    if record.offset not in counts:
                        emitters.append((record, len(records)))
                    counts[record.offset] = counts.get(record.offset, 0) + 1
        return [
            FailedRecord(partition, r, Condition.OUTPUT_DELIVERY_FAILED, counts[r.offset], error, size)
            for r, size in emitters
        ]

    async def _write_emitted(self, outputs: list[Emitted], lane: Busy) -> Exception | None:
        """Write outputs to every sink (with their retries): None once all acknowledged, else the final error."""
        if not outputs or not self._outputs:
            return None
        lane.busy += 1
        try:
            error = await self._outputs.write(outputs, lambda: lane.stopping)
        finally:
            lane.busy -= 1
        if error is None:
            source = outputs[0].source
            self.stats.at(Partition(source.topic, source.partition)).outputs += len(outputs)
        return error

    async def _resolve(self, records: Sequence[SourceRecord]) -> None:
        await self._value_codec.resolve([r.value for r in records])
        if self._key_codec is not None:
            await self._key_codec.resolve([r.key for r in records])

    def _decode_batch(
        self, partition: Partition, records: Sequence[SourceRecord], predecoded: dict[Position, Any] | None
    ) -> tuple[list[Record], list[FailedRecord]]:
        """Decode (and validate) every value once; a record that does not decode never reaches the handler.

        Native handlers get the decoded Records. Lambda-style handlers get the source's event, so their values
        are only decoded to be validated when the format has a schema (the event then carries them)."""
        if not self._native and not self._resolves:
            return [], []
        decode = self._decode_value
        value_of = self._with_predecoded(predecoded) if predecoded else None
        decode_key = self._decode_key
        if decode_key is None:
            try:  # the common case, in one pass; `_record` inlined (a call per record costs a fifth of a Record)
                kinds = TIMESTAMP_TYPES
                if value_of is None:
                    return [
                        Record(
                            r.topic,
                            r.partition,
                            r.offset,
                            r.timestamp,
                            r.key,
                            decode(r.value),
                            r.headers,
                            kinds[r.timestamp_type],
                        )
                        for r in records
                    ], []
                return [_record(r, value_of(r), r.key) for r in records], []
            except Exception:
                pass
        decoded: list[Record] = []
        failures: list[FailedRecord] = []
        for r in records:
            try:
                key = r.key if decode_key is None else decode_key(r.key)
                decoded.append(_record(r, decode(r.value) if value_of is None else value_of(r), key))
            except Exception as error:
                failures.append(FailedRecord(partition, r, Condition.DESERIALIZATION_ERROR, 0, error, len(records)))
        return decoded, failures

    def _with_predecoded(self, predecoded: dict[Position, Any]) -> Callable[[SourceRecord], Any]:
        """Decode by record: the filters' decoded value when there is one (validated into the model, if any)."""
        decode, validate = self._value_codec.decode, self._validate
        missing = object()

        def value_of(r: SourceRecord) -> Any:
            value = predecoded.pop(r.offset, missing)
            if value is missing:
                value = decode(r.value)
            return value if validate is None else validate(value)

        return value_of

    async def _deliver(self, partition: Partition, failures: list[FailedRecord], lane: Busy) -> None:
        """Hand failures to the destination, retrying until it acknowledges them (nothing moves until then), or
        drop them when there is none (only under an explicit policy); either way each is logged (rate-limited)."""
        failures.sort(key=lambda f: f.record.offset)
        if self._destination is None:  # only under an explicit policy (else held), or a window's final
            self._failure_log.left(failures, "dropped", f"no on_failure, policy {self._drop_policy}")
            self.stats.at(partition).dropped += len(failures)
            return
        destination, writer = self._destination, self._dead_letters
        assert writer is not None, "opened before any batch runs"

        async def deliver() -> None:
            try:
                await writer.deliver(self.origin, failures)
            except Exception:
                self.stats.at(partition).delivery_errors += 1
                raise

        what = f"writing {len(failures)} failed records to {destination}"
        await self.until_done(deliver, lane, what, held=(partition, failures[0].record.offset))
        self.stats.at(partition).dead_lettered += len(failures)
        self._failure_log.left(failures, "dead-lettered", f"to {destination}")

    async def until_done(
        self,
        action: Callable[[], Awaitable[None]],
        lane: Busy,
        what: str,
        *,
        limit: int | None = None,
        held: tuple[Partition, Position] | None = None,
    ) -> Exception | None:
        """Run `action` until it succeeds (None), with the function's backoff between attempts, or until `limit`
        retries failed too (their last error): for what must happen before the partition moves on (dead letters, a
        window's final invocation). While it fails, the partition shows as held at `held` (partition, offset), if
        given. Stopping ends it uncommitted."""
        hold: Hold | None = None

        async def attempt() -> None:
            if lane.stopping:
                raise StopProcessing  # a BaseException: not retried, the batch stays uncommitted
            await action()

        def failed(state: RetryCallState) -> None:
            nonlocal hold
            error = state.outcome.exception() if state.outcome is not None else None
            log.error(
                "function %s: %s failed (attempt %d of %s): %r; retrying in %.2f s",
                self.function.name,
                what,
                state.attempt_number,
                "unlimited" if limit is None else limit + 1,
                error,
                state.upcoming_sleep,
            )
            if held is not None:
                hold = hold or Hold(*held, "")
                hold.reason, hold.rounds = f"{what}: {error!r}", state.attempt_number
                self.holds.add(hold)

        retrying = self._retrying.copy(
            stop=stop_never if limit is None else stop_after_attempt(limit + 1),
            retry=retry_if_exception_type(Exception),
            before_sleep=failed,
            retry_error_callback=_last_error,
        )
        try:
            result: Exception | None = await retrying(attempt)
            return result
        finally:
            if hold is not None:
                self.holds.discard(hold)

    def delay(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter before retry number `attempt` (the function's `backoff`)."""
        return self.function.config.backoff.delay(attempt)


def _last_error(state: RetryCallState) -> Exception | None:
    """What `until_done` returns once its attempts are used up: the last attempt's error."""
    error = state.outcome.exception() if state.outcome is not None else None
    return error if isinstance(error, Exception) else None


def drop_policy(config: FunctionConfig) -> str | None:
    """The policy the user set under which failures without a destination are dropped, as the log names it; None
    for the defaults (-1, -1), under which nothing is dropped."""
    explicit = [
        f"{name}={value}"
        for name in ("maximum_retry_attempts", "maximum_record_age_in_seconds")
        if (value := getattr(config, name)) >= 0
    ]
    return ", ".join(explicit) or None


def _outcome(response: Any) -> str:
    """How an invocation that returned went, for its span and histograms: partial if it reported failed items."""
    if isinstance(response, BatchItemFailures) or (isinstance(response, dict) and response.get("batchItemFailures")):
        return "partial"
    return "success"


def _record(r: SourceRecord, value: Any, key: Any) -> Record:
    return Record(r.topic, r.partition, r.offset, r.timestamp, key, value, r.headers, TIMESTAMP_TYPES[r.timestamp_type])


def _decoder(
    decode: Callable[[bytes | None], Any], validate: Callable[[Any], Any] | None
) -> Callable[[bytes | None], Any]:
    """Decode, then validate into the function's `value_model` if it declares one."""
    if validate is None:
        return decode
    return lambda data: validate(decode(data))
