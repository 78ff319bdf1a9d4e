"""Every scenario runs once per source: `harness` is parametrized over the sources' harnesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from conformance.harness import Harness
from conformance.kafka import KafkaHarness
from conformance.memory import MemoryHarness


@pytest.fixture(params=["memory", "kafka"])
async def harness(request: pytest.FixtureRequest, name: Callable[[str], str]) -> AsyncIterator[Harness]:
    """The source under test; the Kafka one on the session's broker (started only when a Kafka case runs)."""
    made: Harness = (
        MemoryHarness() if request.param == "memory" else KafkaHarness(request.getfixturevalue("broker"), name)
    )
    try:
        yield made
    finally:
        await made.close()
