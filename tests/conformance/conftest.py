"""Every scenario runs once per source: `harness` is parametrized over the sources' harnesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from conformance.dynamodb import DynamoDBHarness
from conformance.harness import Harness
from conformance.kafka import KafkaHarness
from conformance.kinesis import KinesisHarness
from conformance.memory import MemoryHarness


@pytest.fixture(params=["memory", "kafka", "kinesis", "dynamodb"])
async def harness(request: pytest.FixtureRequest, name: Callable[[str], str]) -> AsyncIterator[Harness]:
    """The source under test; the Kafka one on the session's broker, the Kinesis one on moto, the DynamoDB Streams
    one on the shard-rolling double with its tables on moto (each started only when a case of it runs)."""
    made: Harness
    if request.param == "memory":
        made = MemoryHarness()
    elif request.param == "kafka":
        made = KafkaHarness(request.getfixturevalue("broker"), name)
    elif request.param == "kinesis":
        made = KinesisHarness(request.getfixturevalue("aws"))
    else:
        made = DynamoDBHarness(request.getfixturevalue("ddb_streams"), request.getfixturevalue("aws"))
    try:
        yield made
    finally:
        await made.close()
