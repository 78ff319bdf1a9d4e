"""KafkaTopic as an on_failure destination: one dead letter per failed record, in Lambda's layout.

The value is Lambda's on-failure record for Kafka-topic destinations (requestContext, responseContext, version,
timestamp, KafkaBatchInfo, payload with the record in the Lambda event format) plus errorType, errorMessage and a
truncated stackTrace. The key is the original key; headers are the original ones plus `streamfn.*` provenance, so
dead letters can be filtered and redriven without parsing the value.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import PrivateAttr

from streamfn.config import StrictModel
from streamfn.connectors.kafka.source import join_servers
from streamfn.errors import ConfigError
from streamfn.failure import Condition, FailedRecord, FailureOrigin, PartialFailure

PROVENANCE_PREFIX = "streamfn."
STACK_LINES = 20
DELIVERY_TIMEOUT_MS = 10_000


class KafkaTopic(StrictModel):
    """A Kafka topic, on the source's cluster unless `bootstrap_servers` names another."""

    owner = "KafkaTopic"

    topic: str
    bootstrap_servers: str | list[str] | None = None
    _servers: str | None = PrivateAttr(None)
    _producer: AIOKafkaProducer | None = PrivateAttr(None)

    def __init__(self, topic: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"topic": topic} if topic is not None else {}), **values)

    def __str__(self) -> str:
        return f"KafkaTopic({self.topic!r})"

    def check(self, source_topics: Sequence[str]) -> None:
        if self.topic in source_topics and self.bootstrap_servers is None:
            raise ConfigError(
                f"on_failure={self} is the function's own source topic: its dead letters would be read again "
                "(Lambda refuses this too); use another topic"
            )

    def servers(self, source_servers: str | None) -> str | None:
        """Its own cluster if it names one, else its function's source cluster."""
        return join_servers(self.bootstrap_servers) or source_servers

    async def start(self, default_servers: str | None) -> None:
        self._servers = self.servers(default_servers)

    async def deliver(self, origin: FailureOrigin, failures: Sequence[FailedRecord]) -> None:
        producer = await self._connected(origin.servers)
        sent = [
            await producer.send(self.topic, dead_letter(origin, f), key=f.record.key, headers=provenance_headers(f))
            for f in failures
        ]
        for delivery in sent:
            await delivery  # acknowledged by the broker (acks=all) before the source's offset may move

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _connected(self, source_servers: str) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._servers or source_servers,
                acks="all",
                request_timeout_ms=DELIVERY_TIMEOUT_MS,
                max_request_size=16 * 1024 * 1024,
            )
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer


def dead_letter(origin: FailureOrigin, failure: FailedRecord) -> bytes:
    record = failure.record
    payload = origin.event(failure.partition, [record])
    message: dict[str, Any] = {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": origin.function_arn,
            "condition": str(failure.condition),
            "approximateInvokeCount": failure.invoke_count,
        },
    }
    if failure.invoke_count and failure.condition is not Condition.RECORD_AGE_EXCEEDED:
        message["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            # Lambda reports null for partial batch failures
            "functionError": None if isinstance(failure.error, PartialFailure) else "Unhandled",
        }
    if failure.error is not None:
        message["errorType"] = type(failure.error).__name__
        message["errorMessage"] = str(failure.error)
        message["stackTrace"] = traceback.format_exception(failure.error)[-STACK_LINES:]
    message["version"] = "1.0"
    message["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    serialized_payload = orjson.dumps(payload)
    message["KafkaBatchInfo"] = {
        "batchSize": 1,
        "bootstrapServers": origin.servers,
        "payloadSize": len(serialized_payload),
        "recordInfo": {"offset": record.offset, "timestamp": record.timestamp},
    }
    message["payload"] = payload
    return orjson.dumps(message)


def provenance_headers(failure: FailedRecord) -> list[tuple[str, bytes]]:
    record = failure.record
    kept = [(name, value) for name, value in record.headers if not name.startswith(PROVENANCE_PREFIX)]
    return [
        *kept,
        ("streamfn.source.topic", record.topic.encode()),
        ("streamfn.source.partition", str(record.partition).encode()),
        ("streamfn.source.offset", str(record.offset).encode()),
        ("streamfn.error.condition", str(failure.condition).encode()),
        ("streamfn.error.type", (type(failure.error).__name__ if failure.error else str(failure.condition)).encode()),
    ]
