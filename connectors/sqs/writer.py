"""The open SqsQueue of one function: SendMessageBatch requests and what their answers mean.

Why these choices:
- Every output of a write becomes a message before the first request, so an output SQS could never accept
  rejects the write without a partial delivery. Messages go in requests of at most 10 entries and 1 MiB.
- A FIFO queue gets its requests one at a time, in order, so each group keeps the handler's order; a standard
  queue has no order to keep, so a few requests are in flight at once.
- Entries a request could not deliver make the write fail: `RejectedOutput` when SQS says the message itself is
  invalid (sender fault: too long, characters it refuses...), which no retry fixes, else `SqsDeliveryError`, which
  the engine retries; so does any connection error or timeout. botocore's own retries are off (the engine's
  backoff owns retrying) and its timeouts short, so a queue that cannot be reached fails a write in seconds.
- The writer remembers the outputs SQS acknowledged recently and skips them when the engine retries a write that
  failed half way, so a standard queue sees a duplicate only after a restart or rebalance (a FIFO queue drops
  those too, by deduplication id, within 5 minutes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.sqs.message import MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, Message, message
from streamfn.outputs.sink import Delivered, Emitted, RejectedOutput

log = logging.getLogger("streamfn.sqs")

CONCURRENT_REQUESTS = 4
"""SendMessageBatch requests in flight at once for a standard queue."""
REMEMBERED_OUTPUTS = 10_000
"""Acknowledged output ids a writer remembers, to skip them when a failed write is retried."""
INVALID_MESSAGE_CODES = frozenset(
    {
        "InvalidMessageContents",
        "InvalidParameterValue",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MessageTooLong",
        "BatchRequestTooLong",
    }
)
"""Error codes that mean SQS refuses the message itself: sending it again cannot succeed."""
_CODE_PREFIX = "AWS.SimpleQueueService."

Chunk = list[tuple[Emitted, Message]]
T = TypeVar("T")


class SqsDeliveryError(Exception):
    """A write SQS did not acknowledge in full but may on another attempt (throttled, unreachable, its error)."""


class SqsWriter:
    """Sends one function's outputs to one queue with its own aiobotocore client."""

    def __init__(
        self,
        client: Any,
        stack: AsyncExitStack,
        *,
        queue_url: str,
        name: str,
        fifo: bool,
        group: str | None,
        function: str,
    ) -> None:
        self._client = client
        self._stack = stack
        self._queue_url = queue_url
        self._name = name
        self._fifo = fifo
        self._group = group
        self._function = function
        self._delivered = Delivered(REMEMBERED_OUTPUTS)
        self._warned: set[str] = set()

    async def write(self, outputs: Sequence[Emitted]) -> None:
        pending = [output for output in outputs if output.id not in self._delivered]
        messages = [message(o, fifo=self._fifo, group=self._group, function=self._function) for o in pending]
        self._warn_dropped(messages)
        chunks = list(batches(list(zip(pending, messages, strict=True))))
        if self._fifo:
            for chunk in chunks:
                await self._send(chunk)
            return
        limit = asyncio.Semaphore(CONCURRENT_REQUESTS)

        async def send(chunk: Chunk) -> None:
            async with limit:
                await self._send(chunk)

        results = await asyncio.gather(*(send(chunk) for chunk in chunks), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            if isinstance(error, RejectedOutput):
                raise error
        if errors:
            raise errors[0]

    async def close(self) -> None:
        await self._stack.aclose()

    async def _send(self, chunk: Chunk) -> None:
        entries = [{"Id": str(index), **sent.entry} for index, (_, sent) in enumerate(chunk)]
        try:
            response = await self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
        except ClientError as error:
            details = error.response.get("Error", {})
            code = str(details.get("Code", "")).removeprefix(_CODE_PREFIX)
            problem = f"{self}: SendMessageBatch of {len(chunk)} messages failed: {code} ({details.get('Message')})"
            if code in INVALID_MESSAGE_CODES:
                raise RejectedOutput(f"{problem}; outputs {chunk[0][0].id} to {chunk[-1][0].id}") from error
            raise SqsDeliveryError(problem) from error
        except (BotoCoreError, OSError, TimeoutError) as error:
            raise SqsDeliveryError(f"{self}: SendMessageBatch failed: {error}") from error
        for success in response.get("Successful", []):
            self._delivered.add(chunk[int(success["Id"])][0].id)
        failed = response.get("Failed", [])
        if failed:
            self._fail(chunk, failed)

    def _fail(self, chunk: Chunk, failed: list[dict[str, Any]]) -> None:
        """Raise for a request that left entries undelivered: RejectedOutput if any was refused as invalid."""
        described = []
        rejected = False
        for entry in failed:
            code = str(entry.get("Code", "")).removeprefix(_CODE_PREFIX)
            output = chunk[int(entry["Id"])][0]
            described.append(f"output {output.id}: {code} ({entry.get('Message')})")
            rejected = rejected or (bool(entry.get("SenderFault")) and code in INVALID_MESSAGE_CODES)
        problem = f"{self}: SQS did not accept {len(failed)} of {len(chunk)} messages: {'; '.join(described)}"
        raise RejectedOutput(problem) if rejected else SqsDeliveryError(problem)

    def _warn_dropped(self, messages: list[Message]) -> None:
        for name in {name for sent in messages for name in sent.dropped} - self._warned:
            self._warned.add(name)
            log.warning(
                "%s: header %r of function %r is not sent as a message attribute: SQS allows 10 per message, "
                "non-empty, named with letters, digits, '-', '_' and '.'",
                self,
                name,
                self._function,
            )

    def __str__(self) -> str:
        return f"SqsQueue({self._name!r})"


def batches(messages: list[tuple[T, Message]]) -> Iterator[list[tuple[T, Message]]]:
    """Consecutive runs of at most 10 messages and 1 MiB together: one SendMessageBatch request each (of outputs,
    or of failure records: `T` is what each message stands for)."""
    chunk: list[tuple[T, Message]] = []
    size = 0
    for item in messages:
        if chunk and (len(chunk) == MAX_BATCH_ENTRIES or size + item[1].size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item[1].size
    if chunk:
        yield chunk
