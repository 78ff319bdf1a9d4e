"""A lane: one ordered sequence of batches within a partition, invoked one at a time.

A partition has `parallelization_factor` lanes; records of one key always go to the same lane, so they are never
in flight together and are handled in offset order. A lane cuts its own batches (size, 6 MB, window), runs each
to the end under the failure policy (streamfn.recovery), and hands what still fails to the `on_failure`
destination, acknowledged, before telling its partition the batch is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamfn.batch import Batch, PartitionBuffer
from streamfn.failure import BatchItemFailures, Condition, FailedRecord
from streamfn.handler import HandlerStyle
from streamfn.record import TIMESTAMP_TYPES, Record, SourceRecord

if TYPE_CHECKING:
    from streamfn.partition import PartitionWorker

log = logging.getLogger("streamfn.lane")


class StopProcessing(BaseException):
    """The partition is being revoked or the worker is shutting down: leave the batch uncommitted.

    A BaseException, so that no handler of function errors mistakes it for one."""


class Lane:
    def __init__(self, owner: PartitionWorker, index: int) -> None:
        self._owner = owner
        self.index = index
        config = owner.function.config
        self.buffer = PartitionBuffer(
            owner.partition,
            batch_size=config.batch_size,
            window=config.maximum_batching_window_in_seconds,
            pause=lambda: owner.hold(index),
            resume=lambda: owner.release(index),
        )
        self.in_flight: Batch | None = None
        self.invoking = False
        self._decoded: list[Record] = []
        """The current batch's records as a native handler receives them (those that decoded)."""
        self._task = asyncio.create_task(self._run(), name=f"streamfn:{owner.function.name}:{owner.partition}:{index}")

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing in flight."""
        return self.in_flight is None and self.buffer.buffered == 0

    def lowest_pending(self) -> int | None:
        """The lowest offset of this lane not handled yet (in flight or buffered), if any."""
        return self.in_flight.first_offset if self.in_flight is not None else self.buffer.first_offset

    async def stop(self, grace: float) -> None:
        """Take no new batch; let an invocation under way finish within `grace` seconds; never complete after."""
        self.buffer.close()
        if not self.invoking:
            self._task.cancel()  # waiting for records, backing off or for the destination: nothing to finish
        done, _ = await asyncio.wait((self._task,), timeout=grace)
        if not done:
            log.warning(
                "function %s: %s: abandoning an invocation still running after %.1f s; its batch is not committed",
                self._owner.function.name,
                self._owner.partition,
                grace,
            )
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopProcessing):
            await self._task

    async def _run(self) -> None:
        while (batch := await self.buffer.next_batch()) is not None:
            self.in_flight = batch
            await self._handle(batch)
            self.in_flight = None
            self._owner.lane_done()

    async def _handle(self, batch: Batch) -> None:
        """Run the batch to the end: every record succeeded, or failed and was delivered (or dropped)."""
        self._decoded, failures = self._decode_batch(batch)
        invocable = batch.records
        if failures:  # only what decoded reaches the handler
            decodable = {record.offset for record in self._decoded}
            invocable = [r for r in batch.records if r.offset in decodable]
        if invocable:
            failures += await self._owner.recovery.run(self._owner.partition, invocable, self._invoke)
        self._owner.stats.handled += len(batch.records) - len(failures)
        if failures:
            await self._deliver(failures)

    async def _invoke(self, records: Sequence[SourceRecord]) -> Any:
        """One invocation with these records of the current batch; returns the handler's response."""
        if self._owner.stopping:
            raise StopProcessing
        if self._owner.function.style is HandlerStyle.LAMBDA:
            payload: Any = self._owner.reader.lambda_event(self._owner.partition, records)
        elif len(records) == len(self._decoded):  # the whole batch: the decoded records, in offset order
            payload = self._decoded
        else:  # a part of it, after a partial failure or a bisection
            wanted = {r.offset for r in records}
            payload = [record for record in self._decoded if record.offset in wanted]
        self._owner.stats.invoked += len(records)
        self.invoking = True
        try:
            response = await self._owner.invoker.invoke(payload)
        except BatchItemFailures as reported:  # a native handler's partial failure, raised
            response = reported
        except Exception:
            self._owner.stats.failed_invocations += 1
            raise
        finally:
            self.invoking = False
        self._owner.stats.batches += 1
        return response

    def _decode_batch(self, batch: Batch) -> tuple[list[Record], list[FailedRecord]]:
        """Native handlers: decode every value once; a record that does not decode never reaches the handler."""
        if self._owner.function.style is not HandlerStyle.NATIVE:
            return [], []
        try:  # the common case, in one pass
            return [self._record(r, self._owner.decode(r.value)) for r in batch.records], []
        except Exception:
            pass
        decoded: list[Record] = []
        failures: list[FailedRecord] = []
        for r in batch.records:
            try:
                decoded.append(self._record(r, self._owner.decode(r.value)))
            except Exception as error:
                failures.append(
                    FailedRecord(
                        self._owner.partition, r, Condition.DESERIALIZATION_ERROR, 0, error, len(batch.records)
                    )
                )
        return decoded, failures

    @staticmethod
    def _record(r: SourceRecord, value: Any) -> Record:
        return Record(
            r.topic, r.partition, r.offset, r.timestamp, r.key, value, r.headers, TIMESTAMP_TYPES[r.timestamp_type]
        )

    async def _deliver(self, failures: list[FailedRecord]) -> None:
        """Hand failures to the destination, retrying until it acknowledges them; nothing moves until then."""
        destination = self._owner.function.config.on_failure
        failures.sort(key=lambda f: f.record.offset)
        if destination is None:
            for f in failures:
                log.error(
                    "function %s: %s offset %d dropped (%s after %d invocations, no on_failure destination): %s",
                    self._owner.function.name,
                    self._owner.partition,
                    f.record.offset,
                    f.condition,
                    f.invoke_count,
                    f.error,
                )
            self._owner.stats.dropped += len(failures)
            return
        attempt = 0
        while True:
            if self._owner.stopping:
                raise StopProcessing
            try:
                await destination.deliver(self._owner.origin, failures)
                self._owner.stats.dead_lettered += len(failures)
                return
            except Exception as error:
                attempt += 1
                delay = self._owner.delay(attempt)
                log.error(
                    "function %s: %s: writing %d failed records to %s failed (attempt %d): %r; retrying in %.2f s",
                    self._owner.function.name,
                    self._owner.partition,
                    len(failures),
                    destination,
                    attempt,
                    error,
                    delay,
                )
            await asyncio.sleep(delay)
