"""Writing a batch's outputs to every sink of its function, retried with tenacity until written or exhausted.

All sinks are written concurrently, each with its own retry budget (`SinkRetry`). While a write is retried the
lane that asked for it takes no new batch, so the partition's buffer fills and the partition is paused: a sink
that is down costs bounded memory. The outcome is all-or-nothing per batch: the first sink error that outlasts
its retries is returned, and the caller routes the batch's input records to `on_failure`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

from streamfn.failures.model import StopProcessing
from streamfn.observability.metrics import FunctionInstruments
from streamfn.outputs.sink import Delete, Emitted, OffsetStoringWriter, RejectedOutput, Sink, SinkContext, SinkWriter
from streamfn.record import Partition

log = logging.getLogger("streamfn.delivery")


class Outputs:
    """The open sinks of one function."""

    def __init__(self, function: str, sinks: Sequence[Sink], instruments: FunctionInstruments | None = None) -> None:
        self._function = function
        self._sinks = list(sinks)
        self._instruments = instruments
        """Metrics on: each write attempt's duration and errors, per sink."""
        self._writers: list[SinkWriter] = []
        self._cannot_delete = next((sink for sink in self._sinks if not getattr(sink, "deletes", False)), None)
        """A sink that cannot take `Delete` outputs (the first one), if any."""

    def __bool__(self) -> bool:
        return bool(self._sinks)

    async def open(self, context: SinkContext) -> None:
        for sink in self._sinks:
            self._writers.append(await sink.open(context))

    async def close(self) -> None:
        for writer in self._writers:
            try:
                await writer.close()
            except Exception as error:  # closing must not keep the others open
                log.warning("function %s: closing %s failed: %r", self._function, writer, error)
        self._writers.clear()

    async def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """exactly_once: per source partition, how far every sink has stored outputs (absent unless all have)."""
        stored: dict[Partition, int] | None = None
        for writer in self._writers:
            found = await cast(OffsetStoringWriter, writer).positions(partitions)
            stored = found if stored is None else {p: min(o, found[p]) for p, o in stored.items() if p in found}
        return stored or {}

    async def write(self, outputs: Sequence[Emitted], stopping: Callable[[], bool]) -> Exception | None:
        """Write `outputs` to every sink; None once all acknowledged, else the error that exhausted its retries."""
        refused = self._refused_deletion(outputs)
        if refused is not None:
            return refused
        results = await asyncio.gather(
            *(
                self._write(sink, writer, outputs, stopping)
                for sink, writer in zip(self._sinks, self._writers, strict=True)
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # stopping or cancelled: nothing is committed
        return next((result for result in results if isinstance(result, Exception)), None)

    def _refused_deletion(self, outputs: Sequence[Emitted]) -> RejectedOutput | None:
        """A `Delete` output for a sink that cannot delete rejects the batch before any sink writes anything (one scan
        per batch, only when a sink of the function cannot delete)."""
        if self._cannot_delete is None:
            return None
        deletion = next((output for output in outputs if isinstance(output.value, Delete)), None)
        if deletion is None:
            return None
        return RejectedOutput(
            f"output {deletion.id} is {deletion.value!r}, and {self._cannot_delete} cannot delete: only sinks that "
            "delete by key (DynamoDBTable) take Delete outputs"
        )

    async def _write(
        self, sink: Sink, writer: SinkWriter, outputs: Sequence[Emitted], stopping: Callable[[], bool]
    ) -> None:
        retry = sink.retry

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.error(
                "function %s: writing %d outputs to %s failed (attempt %d of %s): %r; retrying in %.2f s",
                self._function,
                len(outputs),
                sink,
                state.attempt_number,
                "unlimited" if retry.max_attempts == -1 else retry.max_attempts,
                error,
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            stop=stop_never if retry.max_attempts == -1 else stop_after_attempt(retry.max_attempts),
            wait=wait_random_exponential(multiplier=retry.initial_seconds, max=retry.max_seconds),
            retry=retry_if_exception(
                lambda error: isinstance(error, Exception) and not isinstance(error, RejectedOutput)
            ),
            before_sleep=log_retry,
            reraise=True,
        )
        instruments, name = self._instruments, str(sink)
        async for attempt in retrying:
            with attempt:
                if stopping():
                    raise StopProcessing
                started, error = time.perf_counter(), None
                try:
                    await writer.write(outputs)
                except Exception as failed:
                    error = failed
                    raise
                finally:
                    if instruments is not None:
                        instruments.sink_write(name, time.perf_counter() - started, error)
