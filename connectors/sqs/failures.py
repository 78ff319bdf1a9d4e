"""An SqsQueue opened as a function's on_failure destination: one message per failed record, Lambda's failure
record with metadata only, as Lambda sends to an SQS (or SNS) destination (its "on-failure destination" pages for
Kinesis, DynamoDB Streams and Kafka): requestContext, responseContext, version, timestamp and the source's
batch-info block (KinesisBatchInfo for a Kinesis stream), from streamfn.failures.record, which the Kafka dead-letter
topic shares. The record itself is not in the message: it stays in its stream until the stream's retention, and the
batch-info block says where (shard and sequence numbers, or topic, partition and offset).

Why these choices:
- One message per failed record, as streamfn's other destinations write them (the dialect's block names that
  record: `batchSize` 1, start = end); Lambda writes one per failed batch.
- Messages go in SendMessageBatch requests of at most 10 (SQS's limit), in order; `deliver` returns only when SQS
  acknowledged every one, else it raises and the engine tries again with its backoff (the partition is held
  meanwhile). Messages SQS acknowledged are not sent again when the engine retries a delivery that failed half way.
- A FIFO queue (which Lambda does not take as a destination) gets each partition's records as one group, in order,
  deduplicated by partition, position and request id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.sqs.message import Message
from streamfn.connectors.sqs.writer import SqsDeliveryError, batches
from streamfn.failures.model import FailedRecord, FailureOrigin
from streamfn.failures.record import failure_payload, failure_record
from streamfn.outputs.sink import Delivered

REMEMBERED_FAILURES = 10_000


def _identity(failure: FailedRecord) -> str:
    return f"{failure.partition}/{failure.record.offset}/{failure.condition}/{failure.request_id}"


class FailureQueueWriter:
    """Sends one function's failure records to one queue with its own aiobotocore client."""

    def __init__(self, client: Any, stack: AsyncExitStack, *, queue_url: str, name: str, fifo: bool) -> None:
        self._client = client
        self._stack = stack
        self._queue_url = queue_url
        self._name = name
        self._fifo = fifo
        self._delivered = Delivered(REMEMBERED_FAILURES)

    def __str__(self) -> str:
        return f"SqsQueue({self._name!r})"

    def message(self, origin: FailureOrigin, failure: FailedRecord) -> Message:
        body = orjson.dumps(failure_record(origin, failure, failure_payload(origin, failure))).decode()
        entry: dict[str, Any] = {"MessageBody": body}
        if self._fifo:
            entry["MessageGroupId"] = str(failure.partition)
            entry["MessageDeduplicationId"] = hashlib.sha256(_identity(failure).encode()).hexdigest()
        return Message(entry, len(body.encode()))

    async def deliver(self, origin: FailureOrigin, failures: Sequence[FailedRecord]) -> None:
        pending = [f for f in failures if _identity(f) not in self._delivered]
        for chunk in batches([(f, self.message(origin, f)) for f in pending]):
            entries = [{"Id": str(index), **sent.entry} for index, (_, sent) in enumerate(chunk)]
            try:
                response = await self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
                problem = f"{self}: SendMessageBatch of {len(chunk)} failure records failed: {error}"
                raise SqsDeliveryError(problem) from error
            for success in response.get("Successful", []):
                self._delivered.add(_identity(chunk[int(success["Id"])][0]))
            failed = response.get("Failed", [])
            if failed:
                codes = sorted({str(entry.get("Code")) for entry in failed})
                raise SqsDeliveryError(
                    f"{self}: SQS did not accept {len(failed)} of {len(chunk)} failure records: {', '.join(codes)}"
                )

    async def close(self) -> None:
        await self._stack.aclose()
