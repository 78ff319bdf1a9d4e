"""How a failing batch is retried, bisected and cut until each record has succeeded or failed for good.

Lambda's semantics for Kafka and streams event source mappings:
- A function error (exception, timeout, malformed partial response) retries the batch whole, with backoff, up to
  `maximum_retry_attempts`; then its records fail with `RetryAttemptsExhausted`.
- With `bisect_batch_on_function_error`, a failing batch of more than one record is split in two halves, invoked
  in order (first half first); splitting consumes no retries and a failing single record gets its retries.
- With `ReportBatchItemFailures`, the lowest failed record becomes the checkpoint: the records before it
  succeeded and the retry starts from it (with bisection too, cutting there costs no retry).
- Records older than `maximum_record_age_in_seconds` are not invoked (again): they fail with `RecordAgeExceeded`
  while the fresh records of the same batch go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streamfn.config import FunctionConfig
from streamfn.context import new_request_id
from streamfn.failures.model import (
    Condition,
    FailedItem,
    FailedRecord,
    InvalidResponse,
    PartialFailure,
    first_failed_index,
)
from streamfn.observability.stats import FunctionStats
from streamfn.record import Partition, SourceRecord

log = logging.getLogger("streamfn.recovery")

Invoke = Callable[[Sequence[SourceRecord], int, str], Awaitable[Any]]
"""Invokes the handler with these records (the how-many-th invocation of them it is, and its request id) and
returns its response; raises on a function error."""


class Recovery:
    """Runs one batch to the end under the function's failure policy; returns the records that failed for good."""

    def __init__(
        self,
        function: str,
        config: FunctionConfig,
        backoff: Callable[[int], float],
        stats: FunctionStats,
        failed_item: FailedItem,
    ) -> None:
        self._function = function
        self._config = config
        self._failed_item = failed_item
        """How a partial batch response names a record (the source's dialect)."""
        self._backoff = backoff
        self._stats = stats
        self._max_age_ms = config.maximum_record_age_in_seconds * 1000

    async def run(self, partition: Partition, records: Sequence[SourceRecord], invoke: Invoke) -> list[FailedRecord]:
        failures: list[FailedRecord] = []
        await self._segment(partition, records, invoke, failures, inherited=0, last_request=None)
        return failures

    async def _segment(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        invoke: Invoke,
        failures: list[FailedRecord],
        inherited: int,
        last_request: str | None,
    ) -> None:
        """Invoke `records` until they succeed or fail for good; `inherited`: invocations that already had them,
        the last of which was `last_request`. Each invocation gets its request id here, so that a dead letter
        names the one its record last saw."""
        invocations = retries = 0
        while True:
            records = self._expire(partition, records, failures, inherited + invocations, last_request)
            if not records:
                return
            try:
                last_request = new_request_id()
                response = await invoke(records, inherited + invocations + 1, last_request)
                invocations += 1
                index = (
                    first_failed_index(response, partition, records, self._failed_item)
                    if self._config.reports_item_failures
                    else None
                )
                if index is None:
                    return
                error: BaseException = PartialFailure(f"the function reported {records[index].offset} failed")
                records = records[index:]  # those before the lowest failed record succeeded
                if index > 0 and self._config.bisect_batch_on_function_error:
                    self._stats.at(partition).bisections += 1
                    continue  # cut at the failure: no retry consumed
            except InvalidResponse as invalid:
                error = invalid
            except Exception as function_error:
                invocations += 1
                error = function_error
            if self._config.bisect_batch_on_function_error and len(records) > 1:
                self._stats.at(partition).bisections += 1
                half = (len(records) + 1) // 2
                log.warning(
                    "function %s: %s offsets %d-%d failed (%s); bisecting",
                    self._function,
                    partition,
                    records[0].offset,
                    records[-1].offset,
                    type(error).__name__,
                )
                invoked = inherited + invocations
                await self._segment(partition, records[:half], invoke, failures, invoked, last_request)
                await self._segment(partition, records[half:], invoke, failures, invoked, last_request)
                return
            limit = self._config.retry_limit
            if limit is not None and retries >= limit:
                invoked = inherited + invocations
                failures.extend(
                    FailedRecord(
                        partition,
                        r,
                        Condition.RETRY_ATTEMPTS_EXHAUSTED,
                        invoked,
                        error,
                        len(records),
                        request_id=last_request,
                    )
                    for r in records
                )
                return
            retries += 1
            self._stats.at(partition).retries += 1
            delay = self._backoff(retries)
            log.error(
                "function %s: %s offsets %d-%d failed (attempt %d of %s): %s: %s; retrying in %.2f s",
                self._function,
                partition,
                records[0].offset,
                records[-1].offset,
                retries,
                "unlimited" if limit is None else limit + 1,
                type(error).__name__,
                error,
                delay,
            )
            await asyncio.sleep(delay)

    def _expire(
        self,
        partition: Partition,
        records: Sequence[SourceRecord],
        failures: list[FailedRecord],
        invoked: int,
        last_request: str | None,
    ) -> Sequence[SourceRecord]:
        """Route records past the maximum record age to the failures; return the fresh ones."""
        if self._max_age_ms < 0:
            return records
        oldest_allowed = time.time() * 1000 - self._max_age_ms
        if records[0].timestamp >= oldest_allowed and all(r.timestamp >= oldest_allowed for r in records):
            return records
        fresh = [r for r in records if r.timestamp >= oldest_allowed]
        failures.extend(
            FailedRecord(
                partition, r, Condition.RECORD_AGE_EXCEEDED, invoked, None, len(records), request_id=last_request
            )
            for r in records
            if r.timestamp < oldest_allowed
        )
        return fresh
