"""The worker of one assigned partition: cut batches, invoke the handler, retry, and report them checkpointed.

Batches of a partition are invoked in offset order, one at a time. A failing batch is retried with capped
exponential backoff (tenacity) for ever, Lambda's default; while it waits, the partition's buffer fills and the
reader pauses the partition, so other partitions keep flowing and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from streamfn.app import Function
from streamfn.batch import Batch, PartitionBuffer
from streamfn.checkpoint import Checkpoint
from streamfn.formats import DECODERS
from streamfn.handler import HandlerStyle, Invoker
from streamfn.record import Partition, Record
from streamfn.source import SourceReader
from streamfn.stats import FunctionStats

log = logging.getLogger("streamfn.partition")

TIMESTAMP_TYPES = ("CREATE_TIME", "LOG_APPEND_TIME")


class StopProcessing(Exception):
    """The partition is being revoked or the worker is shutting down: leave the batch uncommitted."""


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
            self._stats.handled += len(batch.records)
            self._checkpoint.completed(self.partition, batch.next_offset)

    def _payload(self, batch: Batch) -> Any:
        if self.function.style is HandlerStyle.LAMBDA:
            return self._reader.lambda_event(batch.partition, batch.records)
        decode = self._decode
        return [
            Record(
                r.topic,
                r.partition,
                r.offset,
                r.timestamp,
                r.key,
                decode(r.value),
                r.headers,
                TIMESTAMP_TYPES[r.timestamp_type],
            )
            for r in batch.records
        ]

    async def _handle(self, batch: Batch) -> None:
        """Invoke until the batch succeeds; raises StopProcessing if told to stop first.

        The happy path is one plain call: tenacity's wait strategy only comes in once a batch has failed.
        """
        attempt = 1
        while True:
            if self._stopping:
                raise StopProcessing
            try:
                await self._invoke(batch)
                self._stats.batches += 1
                return
            except Exception as error:
                self._stats.failed_invocations += 1
                retry = RetryCallState(self._retrying, None, (), {})
                retry.attempt_number = attempt
                delay = self._retrying.wait(retry)
                log.error(
                    "function %s: %s failed (attempt %d): %s: %s; retrying in %.2f s",
                    self.function.name,
                    batch,
                    attempt,
                    type(error).__name__,
                    error,
                    delay,
                )
            await asyncio.sleep(delay)
            attempt += 1

    async def _invoke(self, batch: Batch) -> None:
        payload = self._payload(batch)
        self._stats.invoked += len(batch.records)
        self._invoking = True
        try:
            await self._invoker.invoke(payload)
        finally:
            self._invoking = False
