"""Log offsets read the way that is right on every Kafka-compatible broker.

ListOffsets(latest) is not enough for the log end: some brokers (Tansu) answer the base offset of the last record
batch + 1, so after a batched produce the end looks smaller than it is. The fetch high watermark is right, so the
end is read from a fetch of the last record. Everything here reads only: no group is joined, nothing is committed,
no topic is created.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.errors import Unreachable

PROBE_TIMEOUT_SECONDS = 5.0
"""How long the end probe waits for its fetch; past it, ListOffsets' answer stands."""


async def log_ends(
    servers: str, partitions: Sequence[TopicPartition], connection: KafkaConnection | None = None
) -> dict[TopicPartition, int]:
    """The true log end offset (the offset the next new record will get) of each partition."""
    async with _consumer(servers, connection) as consumer:
        return await _ends(consumer, partitions)


async def offset_ranges(
    servers: str, topics: Sequence[str], connection: KafkaConnection | None = None
) -> dict[TopicPartition, tuple[int, int]]:
    """(beginning, true end) of every partition of `topics`, in (topic, partition) order. A topic that does not
    exist has no partitions here (and is not created)."""
    async with _consumer(servers, connection) as consumer:
        # The consumer's bootstrap read every topic's metadata: a topic not in it does not exist.
        found = {topic: sorted(consumer.partitions_for_topic(topic) or ()) for topic in topics}
        partitions = [TopicPartition(topic, p) for topic, numbers in found.items() for p in numbers]
        if not partitions:
            return {}
        beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        ends = await _ends(consumer, partitions)
        return {tp: (beginnings[tp], ends[tp]) for tp in partitions}


@contextmanager
def unreachable(what: str, servers: str) -> Iterator[None]:
    """Kafka client failures (no broker answers, a request fails) as one Unreachable naming `what` and where."""
    try:
        yield
    except (KafkaError, OSError, Unreachable) as error:  # Unreachable: a client's connect() failed
        raise Unreachable(f"cannot read {what} from Kafka at {servers}: {error}") from error


@asynccontextmanager
async def _consumer(servers: str, connection: KafkaConnection | None) -> AsyncIterator[AIOKafkaConsumer]:
    options = await client_options(servers, connection)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    try:
        await connect(consumer, servers, options)
        yield consumer
    finally:
        # aiokafka 0.14: stopping a group-less consumer whose background task has not run yet (nothing awaited since
        # start) raises CancelledError from stop(); one turn of the loop lets the task start.
        await asyncio.sleep(0)
        await consumer.stop()


async def _ends(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """The true ends, read with `consumer` (started, in no group; it is assigned `partitions` for the probe)."""
    if not partitions:
        return {}
    answered: dict[TopicPartition, int] = await consumer.end_offsets(list(partitions))
    nonempty = [tp for tp in partitions if answered[tp] > 0]
    if not nonempty:
        return answered
    consumer.assign(nonempty)
    for tp in nonempty:
        consumer.seek(tp, answered[tp] - 1)
    deadline = time.monotonic() + PROBE_TIMEOUT_SECONDS
    while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in nonempty):
        await consumer.getmany(*nonempty, timeout_ms=200)
    return {tp: max(answered[tp], consumer.highwater(tp) or 0) if tp in nonempty else answered[tp] for tp in partitions}
