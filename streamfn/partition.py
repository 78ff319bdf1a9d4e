"""The worker of one assigned partition: cut batches, invoke the handler, recover from failures, checkpoint.

Batches of a partition are invoked in offset order, one at a time. A failing batch is retried, bisected or cut
under the function's failure policy (streamfn.recovery); what still fails is written to the `on_failure`
destination, acknowledged, before the checkpoint moves past it. While a batch waits, the partition's buffer
fills and the reader pauses the partition, so other partitions keep flowing and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from streamfn.app import Function
from streamfn.batch import Batch, PartitionBuffer
from streamfn.checkpoint import Checkpoint
from streamfn.context import function_arn
from streamfn.failure import BatchItemFailures, Condition, FailedRecord, FailureOrigin
from streamfn.formats import DECODERS
from streamfn.handler import HandlerStyle, Invoker
from streamfn.record import Partition, Record, SourceRecord
from streamfn.recovery import Recovery
from streamfn.source import SourceReader
from streamfn.stats import FunctionStats

log = logging.getLogger("streamfn.partition")

TIMESTAMP_TYPES = ("CREATE_TIME", "LOG_APPEND_TIME")


class StopProcessing(BaseException):
    """The partition is being revoked or the worker is shutting down: leave the batch uncommitted.

    A BaseException, so that no handler of function errors mistakes it for one."""


class PartitionWorker:
    def __init__(
        self,
        function: Function,
        partition: Partition,
        *,
        reader: SourceReader,
        invoker: Invoker,
        checkpoint: Checkpoint,
        stats: FunctionStats,
    ) -> None:
        self.function = function
        self.partition = partition
        self._reader = reader
        self._invoker = invoker
        self._checkpoint = checkpoint
        self._stats = stats
        self._decode = DECODERS[function.source.value_format]
        self.buffer = PartitionBuffer(
            partition,
            batch_size=function.config.batch_size,
            window=function.config.maximum_batching_window_in_seconds,
            pause=lambda: reader.pause(partition),
            resume=lambda: reader.resume(partition),
        )
        self._invoking = False
        self._stopping = False
        backoff = function.config.backoff
        self._retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=backoff.initial_seconds, max=backoff.max_seconds)
        )
        self._recovery = Recovery(function.name, function.config, self._delay, self._count_split)
        self._decoded: list[Record] = []
        """The current batch's records as a native handler receives them (those that decoded)."""
        self._origin = FailureOrigin(function.name, function_arn(function.name), reader.servers, reader.lambda_event)
        self._task = asyncio.create_task(self._run(), name=f"streamfn:{function.name}:{partition}")

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing being invoked."""
        return not self._invoking and self.buffer.buffered == 0

    async def stop(self, grace: float) -> None:
        """Take no new batch; let an invocation under way finish within `grace` seconds; never commit after."""
        self._stopping = True
        self.buffer.close()
        if not self._invoking:
            self._task.cancel()  # waiting for records or backing off: nothing to finish
        done, _ = await asyncio.wait((self._task,), timeout=grace)
        if not done:
            log.warning(
                "function %s: %s: abandoning an invocation still running after %.1f s; its batch is not committed",
                self.function.name,
                self.partition,
                grace,
            )
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopProcessing):
            await self._task

    async def _run(self) -> None:
        while (batch := await self.buffer.next_batch()) is not None:
            await self._handle(batch)
            self._checkpoint.completed(self.partition, batch.next_offset)

    async def _handle(self, batch: Batch) -> None:
        """Run the batch to the end: every record succeeded, or failed and was delivered (or dropped)."""
        self._decoded, failures = self._decode_batch(batch)
        invocable = batch.records
        if failures:  # only what decoded reaches the handler
            decodable = {record.offset for record in self._decoded}
            invocable = [r for r in batch.records if r.offset in decodable]
        if invocable:
            failures += await self._recovery.run(self.partition, invocable, self._invoke)
        self._stats.handled += len(batch.records) - len(failures)
        if failures:
            await self._deliver(failures)

    async def _invoke(self, records: Sequence[SourceRecord]) -> Any:
        """One invocation with these records of the current batch; returns the handler's response."""
        if self._stopping:
            raise StopProcessing
        if self.function.style is HandlerStyle.LAMBDA:
            payload: Any = self._reader.lambda_event(self.partition, records)
        elif len(records) == len(self._decoded):  # the whole batch: the decoded records, in offset order
            payload = self._decoded
        else:  # a part of it, after a partial failure or a bisection
            wanted = {r.offset for r in records}
            payload = [record for record in self._decoded if record.offset in wanted]
        self._stats.invoked += len(records)
        self._invoking = True
        try:
            response = await self._invoker.invoke(payload)
        except BatchItemFailures as reported:  # a native handler's partial failure, raised
            response = reported
        except Exception:
            self._stats.failed_invocations += 1
            raise
        finally:
            self._invoking = False
        self._stats.batches += 1
        return response

    def _decode_batch(self, batch: Batch) -> tuple[list[Record], list[FailedRecord]]:
        """Native handlers: decode every value once; a record that does not decode never reaches the handler."""
        if self.function.style is not HandlerStyle.NATIVE:
            return [], []
        try:  # the common case, in one pass
            return [self._record(r, self._decode(r.value)) for r in batch.records], []
        except Exception:
            pass
        decoded: list[Record] = []
        failures: list[FailedRecord] = []
        for r in batch.records:
            try:
                decoded.append(self._record(r, self._decode(r.value)))
            except Exception as error:
                failures.append(
                    FailedRecord(self.partition, r, Condition.DESERIALIZATION_ERROR, 0, error, len(batch.records))
                )
        return decoded, failures

    @staticmethod
    def _record(r: SourceRecord, value: Any) -> Record:
        return Record(
            r.topic, r.partition, r.offset, r.timestamp, r.key, value, r.headers, TIMESTAMP_TYPES[r.timestamp_type]
        )

    async def _deliver(self, failures: list[FailedRecord]) -> None:
        """Hand failures to the destination, retrying until it acknowledges them; nothing moves until then."""
        destination = self.function.config.on_failure
        failures.sort(key=lambda f: f.record.offset)
        if destination is None:
            for f in failures:
                log.error(
                    "function %s: %s offset %d dropped (%s after %d invocations, no on_failure destination): %s",
                    self.function.name,
                    self.partition,
                    f.record.offset,
                    f.condition,
                    f.invoke_count,
                    f.error,
                )
            self._stats.dropped += len(failures)
            return
        attempt = 0
        while True:
            if self._stopping:
                raise StopProcessing
            try:
                await destination.deliver(self._origin, failures)
                self._stats.dead_lettered += len(failures)
                return
            except Exception as error:
                attempt += 1
                delay = self._delay(attempt)
                log.error(
                    "function %s: %s: writing %d failed records to %s failed (attempt %d): %r; retrying in %.2f s",
                    self.function.name,
                    self.partition,
                    len(failures),
                    destination,
                    attempt,
                    error,
                    delay,
                )
            await asyncio.sleep(delay)

    def _count_split(self) -> None:
        self._stats.bisections += 1

    def _delay(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter before retry number `attempt` (tenacity's strategy)."""
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempt
        return self._retrying.wait(state)
