"""Lambda's on-failure record, the part every destination writes the same way whatever the source: who failed
(requestContext), how the function answered (responseContext), version and timestamp, and the source's
batch-info block (its dialect's: KafkaBatchInfo, KinesisBatchInfo...).

One place, so that a dead-letter topic (connectors/kafka/letter.py, which adds the payload and the error) and a
queue (connectors/sqs/failures.py, metadata only, as Lambda sends to SQS and SNS) never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from streamfn.context import new_request_id
from streamfn.failures.model import Condition, FailedRecord, FailureOrigin, PartialFailure

VERSION = "1.0"


def failure_payload(origin: FailureOrigin, failure: FailedRecord) -> dict[str, Any]:
    """The invocation event a failure stands for: its record's, or its tumbling window's final invocation's."""
    window = failure.window
    return origin.event(failure.partition, [failure.record]) if window is None else window.event


def failure_record(origin: FailureOrigin, failure: FailedRecord, payload: dict[str, Any]) -> dict[str, Any]:
    """The record's metadata, as Lambda writes it: `requestContext`, `responseContext` (absent when the record was
    never invoked or left for its age, as AWS sends it), `version`, `timestamp` (ISO 8601, milliseconds) and the
    source's batch-info block, sized against `payload` (`failure_payload`) as Kafka's counts it."""
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": failure.request_id or new_request_id(),
            "functionArn": origin.function_arn,
            "condition": str(failure.condition),
            "approximateInvokeCount": failure.invoke_count,
        },
    }
    if failure.invoke_count and failure.condition is not Condition.RECORD_AGE_EXCEEDED:
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            # Lambda reports null for partial batch failures
            "functionError": None if isinstance(failure.error, PartialFailure) else "Unhandled",
        }
    record["version"] = VERSION
    record["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    name, batch_info = origin.batch_info(failure, len(orjson.dumps(payload)))
    record[name] = batch_info
    return record
