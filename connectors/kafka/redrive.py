"""Redrive: put dead letters back on their source topic, once, byte for byte.

Each dead letter's original record (its key, exact value and headers, connectors/kafka/letter.py) is produced to
the topic and partition it came from, on the source's cluster. A letter whose payload was dropped for size points
at its record in the source topic, which is read back from there; if the source no longer holds that offset
(retention), the letter is reported as lost and nothing is produced for it. Progress is committed in the consumer
group `<function's group>-redrive` after the produced records are acknowledged, so running redrive again resumes
after what it already redrove and never produces a record twice (short of a crash between the two steps).

A function whose source is on another system (a Kinesis stream: streamfn.capabilities.Refillable) gets its letters'
records put back there the same way, through the source's own client (RefillTarget): with its partition key and its
data byte for byte; a letter without its payload is read back from the stream by sequence number. A record the
source cannot take back as it was, or to any effect (a DynamoDB change without its new image, or one its table holds
already) is reported as refused, with the
reason, and not put back; progress moves past it, as past a lost one (the letter stays in the topic).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamfn.capabilities import Origin, Redriven, Refill
from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.letter import Headers, Letter, read_letter
from streamfn.connectors.kafka.producer import MAX_REQUEST_BYTES
from streamfn.connectors.kafka.reader import MAX_FETCH_BYTES

Original = tuple[bytes | None, bytes | None, Headers]
"""A record as redrive puts it back: key, value, headers."""

IDLE_SECONDS = 3.0
SOURCE_FETCH_MS = 5000
"""How long to wait for a record read back from the source topic."""


class SourceRecords:
    """Reads single records back from the source topics by offset (for letters without their payload)."""

    def __init__(self, servers: str, options: dict[str, Any]) -> None:
        self._servers = servers
        self._options = options
        self._consumer = AIOKafkaConsumer(
            **options,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # an offset gone by retention then reads a later one: not it
            fetch_max_bytes=MAX_FETCH_BYTES,
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
        )
        self._started = False

    async def get(self, letter: Letter) -> Original | None:
        if not self._started:
            await connect(self._consumer, self._servers, self._options)
            self._started = True
        tp = TopicPartition(letter.topic, int(letter.partition))
        self._consumer.assign([tp])
        self._consumer.seek(tp, letter.offset)
        fetched = await self._consumer.getmany(tp, timeout_ms=SOURCE_FETCH_MS, max_records=1)
        for record in fetched.get(tp, []):
            if record.offset == letter.offset:
                return record.key, record.value, list(record.headers)
        return None

    async def stop(self) -> None:
        if self._started:
            await self._consumer.stop()


class Target(Protocol):
    """Where the letters' records go back to: the source's topics (KafkaTarget), or a source on another system
    (RefillTarget: a Kinesis stream)."""

    async def get(self, letter: Letter) -> Original | None:
        """The letter's record read back from the source (its payload was dropped), None if the source lost it."""

    async def refusal(self, original: Original) -> str | None:
        """Why the record cannot be put back as it was, None if it can."""

    async def put(self, letter: Letter, original: Original) -> Awaitable[Any] | None:
        """Put the record back where it came from; what it returns is awaited before progress is committed."""


class KafkaTarget:
    """The source's topics: each record produced to the partition it came from, with its key and headers."""

    def __init__(self, producer: AIOKafkaProducer, sources: SourceRecords) -> None:
        self._producer = producer
        self._sources = sources

    async def get(self, letter: Letter) -> Original | None:
        return await self._sources.get(letter)

    async def refusal(self, original: Original) -> str | None:
        return None  # a topic takes any record back

    async def put(self, letter: Letter, original: Original) -> Awaitable[Any]:
        key, value, headers = original
        partition = int(letter.partition)
        sent: Awaitable[Any] = await self._producer.send(
            letter.topic, value, key=key, partition=partition, headers=headers
        )
        return sent


class RefillTarget:
    """A source on another system than the letters (streamfn.capabilities.Refill: a Kinesis stream)."""

    def __init__(self, refill: Refill) -> None:
        self._refill = refill

    async def get(self, letter: Letter) -> Original | None:
        found = await self._refill.get(letter.partition, letter.offset)
        return None if found is None else (*found, [])

    async def refusal(self, original: Original) -> str | None:
        key, value, _ = original
        return await self._refill.refusal(key, value)

    async def put(self, letter: Letter, original: Original) -> None:
        key, value, _ = original
        await self._refill.put(letter.partition, key, value)


async def redrive(
    servers: str,
    dead_letter_topic: str,
    group: str,
    *,
    source_servers: str,
    limit: int | None,
    dry_run: bool,
    connection: KafkaConnection | None = None,
    source_connection: KafkaConnection | None = None,
) -> list[Redriven]:
    """`servers`, `connection`: the dead-letter topic's cluster; `source_servers`, `source_connection`: the
    source's, where records go back to."""
    source_options = await client_options(source_servers, source_connection)
    producer = AIOKafkaProducer(**source_options, acks="all", max_request_size=MAX_REQUEST_BYTES)
    await connect(producer, source_servers, source_options)
    sources = SourceRecords(source_servers, source_options)
    try:
        target = KafkaTarget(producer, sources)
        return await redrive_letters(
            servers, dead_letter_topic, group, target, limit=limit, dry_run=dry_run, connection=connection
        )
    finally:
        await sources.stop()
        await producer.stop()


async def redrive_letters(
    servers: str,
    dead_letter_topic: str,
    group: str,
    target: Target,
    *,
    limit: int | None,
    dry_run: bool,
    connection: KafkaConnection | None = None,
) -> list[Redriven]:
    """Read the letters of `dead_letter_topic` after the group's progress and put each record back with `target`;
    `servers`, `connection`: the dead-letter topic's cluster."""
    options = await client_options(servers, connection)
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
    await connect(consumer, servers, options)
    done: list[Redriven] = []
    try:
        found = consumer.partitions_for_topic(dead_letter_topic) or set()
        partitions = [TopicPartition(dead_letter_topic, p) for p in sorted(found)]
        if not partitions:
            return done
        consumer.assign(partitions)
        idle_since = time.monotonic()
        while limit is None or len(done) < limit:
            fetched = await consumer.getmany(timeout_ms=200, max_records=None if limit is None else limit - len(done))
            if not fetched:
                if await _caught_up(consumer, partitions) or time.monotonic() - idle_since > IDLE_SECONDS:
                    break
                continue
            idle_since = time.monotonic()
            sent = []
            offsets: dict[TopicPartition, int] = {}
            for tp, letters in fetched.items():
                for record in letters:
                    letter = read_letter(record.key, record.value, record.headers)
                    origin: Origin = "letter"
                    original = letter.original
                    if letter.window:
                        origin = "window"
                    elif original is None:
                        original = await target.get(letter)
                        origin = "source" if original is not None else "lost"
                    reason = None if original is None else await target.refusal(original)
                    if reason is not None:
                        origin = "refused"
                    elif original is not None and not dry_run:
                        sent.append(await target.put(letter, original))
                    done.append(
                        Redriven(letter.topic, letter.partition, letter.offset, letter.condition, origin, reason or "")
                    )
                    offsets[tp] = record.offset + 1
            for delivery in sent:
                if delivery is not None:
                    await delivery  # acknowledged before the redrive's progress is committed
            if not dry_run:
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
    return done


async def _caught_up(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """Every partition read to its high watermark (known once fetched)."""
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True
