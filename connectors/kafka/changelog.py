"""KafkaChangelog: a function's state changelog as compacted Kafka topics, one per source topic.

Every entry names the source partition whose state it is in its `streamfn.partition` header (the partition id as
text: Kafka's number, a Kinesis shard's name), and a restore keeps only its own partition's entries, whoever owns
the partition after any rebalance; the children of a shard that split start from nothing while their parents'
entries stay theirs. Where an entry goes is placement: Kafka's partition N in changelog partition N (each changelog
topic has at least the partitions of its source topic), which holds its entries alone, so a restore reads just its
own state and the record key is the state key; a partition named by a string in the changelog partition its hash
picks, which it may share, so its record keys are its id, a NUL, then the state key, and compaction never folds
one shard's key into another's. Compaction keeps the log bounded at one record per key; the restore does not rely
on it (brokers such as Tansu accept `cleanup.policy=compact` and never compact), it folds whatever it reads,
oldest first.

Entries written before they named their partition (no header) are in the changelog partition of their source
partition's number, which they are taken to be: such changelogs restore as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.producer.message_accumulator import BatchBuilder

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.producer import DELIVERY_TIMEOUT_MS, MAX_REQUEST_BYTES
from streamfn.errors import ConfigError
from streamfn.record import Partition
from streamfn.state.changelog import APPLIED_HEADER, ChangelogEntry

PARTITION_HEADER = "streamfn.partition"
"""The changelog record header that names the source partition an entry belongs to (its id as text)."""

MAX_TOPIC_NAME = 249
"""Kafka's limit on a topic name's length."""
COMPACTED = {"cleanup.policy": "compact"}
BATCH_BYTES = 1024 * 1024
"""Producer batch size: aiokafka sends one batch per partition at a time, so a write of a few hundred entries in
16 KB batches (the default) would cost a round trip per 16 KB."""
FETCH_BYTES = 16 * 1024 * 1024
FETCH_MAX_WAIT_MS = 50
"""How long the broker holds a fetch of a partition with nothing new: the cost of restoring an empty partition."""
MAX_RECORDS = 100_000
RESTORE_STALL_SECONDS = 30.0
"""A restore that reads nothing new for this long (broker gone, partition offline) fails rather than hangs."""
_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")


def changelog_topic(group_id: str, topic: str) -> str:
    """`<group>-<topic>-changelog` made a legal Kafka topic name.

    Characters Kafka refuses become `_`; a name over Kafka's 249 characters is cut and ends with a hash of the
    whole name, so that two long names sharing a prefix still get two changelogs and a restart finds the same one.
    """
    name = _ILLEGAL.sub("_", f"{group_id}-{topic}-changelog")
    if len(name) <= MAX_TOPIC_NAME:
        return name
    digest = hashlib.sha256(f"{group_id}\0{topic}".encode()).hexdigest()[:12]
    return f"{name[: MAX_TOPIC_NAME - len(digest) - 1]}-{digest}"


class KafkaChangelog:
    """The Changelog of streamfn.state.changelog over Kafka: one compacted changelog topic per source topic of a
    group."""

    value_limit: int | None = None

    def __init__(
        self, servers: str, group_id: str, topics: Sequence[str], connection: KafkaConnection | None = None
    ) -> None:
        self.servers = servers
        self.connection = connection
        self.group_id = group_id
        self.topics: dict[str, str] = {topic: changelog_topic(group_id, topic) for topic in topics}
        """Source topic -> its changelog topic."""
        self._partitions: dict[str, int] = {}
        """Changelog topic -> its partition count, as found by start()."""
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reading = asyncio.Lock()
        """One consumer serves every restore, and a restore owns its assignment: restores take turns."""

    async def start(self) -> None:
        try:
            options = await client_options(self.servers, self.connection)
            self._producer = AIOKafkaProducer(
                **options,
                acks="all",  # write() returns once entries are durable: the engine commits source offsets after it
                request_timeout_ms=DELIVERY_TIMEOUT_MS,
                max_request_size=MAX_REQUEST_BYTES,
                max_batch_size=BATCH_BYTES,
            )
            await connect(self._producer, self.servers, options)
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=DELIVERY_TIMEOUT_MS)
            await admin.start()
            try:
                await self._create_topics(admin)
            finally:
                await admin.close()
            self._consumer = AIOKafkaConsumer(
                **options,
                group_id=None,  # no group: restores assign and seek themselves, and commit nothing
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_bytes=FETCH_BYTES,
                max_partition_fetch_bytes=FETCH_BYTES,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                client_id=f"streamfn-{self.group_id}-changelog",
            )
            await self._consumer.start()
        except BaseException:
            await self.stop()
            raise

    async def write(self, partition: Partition, entries: Sequence[ChangelogEntry]) -> None:
        """All entries in producer batches for the one changelog partition, queued in order (aiokafka sends one
        batch of a partition at a time, so they land in order), then awaited together (acks=all)."""
        assert self._producer is not None, "started before any write"
        producer, (topic, number) = self._producer, self._changelog(partition)
        if not entries:
            return
        owner = _partition_id(partition)
        prefix = _key_prefix(partition, owner)
        sent: list[asyncio.Future[Any]] = []
        batch: BatchBuilder | None = None
        for entry in entries:
            headers = [(APPLIED_HEADER, str(entry.applied).encode()), (PARTITION_HEADER, owner)]
            key = prefix + entry.key
            if batch is None or batch.append(key=key, value=entry.value, timestamp=None, headers=headers) is None:
                if batch is not None:  # full: send it and start the next
                    sent.append(await producer.send_batch(batch, topic, partition=number))
                batch = producer.create_batch()
                batch.append(key=key, value=entry.value, timestamp=None, headers=headers)  # the first fits
        assert batch is not None
        sent.append(await producer.send_batch(batch, topic, partition=number))
        await asyncio.gather(*sent)

    async def restore(self, partition: Partition) -> list[ChangelogEntry]:
        """`partition`'s entries in its changelog partition, from its beginning to its end as of this call.

        The end is the high watermark of the first fetch, not ListOffsets(latest): Tansu answers the latter with
        the last record batch's base offset + 1, which would cut off all but the first entry of the last write.
        """
        assert self._consumer is not None, "started before any restore"
        consumer, tp = self._consumer, TopicPartition(*self._changelog(partition))
        async with self._reading:
            consumer.assign([tp])  # a fresh assignment: no high watermark known until this restore's first fetch
            try:
                await consumer.seek_to_beginning(tp)
                records = await self._read_to_end(consumer, tp)
            finally:
                consumer.unsubscribe()  # else the consumer goes on fetching the partition in the background
        owner = _partition_id(partition)
        prefix = _key_prefix(partition, owner)
        legacy = isinstance(partition.partition, int)  # entries without a header are this partition's (see above)
        return [entry for record in records if (entry := _entry(tp, record, owner, prefix, legacy)) is not None]

    async def stop(self) -> None:
        producer, consumer = self._producer, self._consumer
        self._producer = self._consumer = None
        try:
            if producer is not None:
                await producer.stop()
        finally:
            if consumer is not None:
                await consumer.stop()

    def _changelog(self, partition: Partition) -> tuple[str, int]:
        """The changelog topic and partition that hold `partition`'s entries: Kafka's partition N in N, refusing
        what has no partition there (aiokafka would wait for ever for metadata of a partition that does not exist),
        a partition named by a string where its stable hash (not Python's, which varies by process) puts it."""
        changelog = self.topics.get(partition.topic)
        if changelog is None:
            raise ValueError(f"{partition.topic!r} is not a source topic of this changelog ({', '.join(self.topics)})")
        count = self._partitions[changelog]
        if isinstance(partition.partition, str):
            digest = hashlib.sha256(partition.partition.encode()).digest()
            return changelog, int.from_bytes(digest[:8], "big") % count
        if not 0 <= partition.partition < count:
            raise ValueError(f"{partition}: the changelog {changelog!r} has {count} partitions")
        return changelog, partition.partition

    async def _read_to_end(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> list[Any]:
        records: list[Any] = []
        end: int | None = None
        position = -1
        progress = time.monotonic()
        while end is None or position < end:
            fetched = await consumer.getmany(tp, timeout_ms=FETCH_MAX_WAIT_MS * 2, max_records=MAX_RECORDS)
            records.extend(fetched.get(tp, ()))
            if end is None:
                end = consumer.highwater(tp)  # known once a fetch came back, with or without records
            moved: int = await consumer.position(tp)  # past control records and compacted gaps too
            if moved != position:
                position, progress = moved, time.monotonic()
            elif time.monotonic() - progress > RESTORE_STALL_SECONDS:
                raise TimeoutError(
                    f"restoring {tp.topic}-{tp.partition}: no progress for {RESTORE_STALL_SECONDS:g} s "
                    f"at offset {position} of {end}"
                )
        # What was written after the call (past `end`) is not part of this restore.
        return [r for r in records if r.offset < end]

    async def _create_topics(self, admin: AIOKafkaAdminClient) -> None:
        """Create each missing changelog topic like its source topic (partitions, replication), compacted; check
        the existing ones have a partition for every source partition."""
        # Metadata for a topic that does not exist creates it, with the broker's default partitions, where
        # auto.create.topics.enable holds (Tansu: always): look a name up only once it is known to exist.
        existing = set(await admin.list_topics())
        missing_sources = [topic for topic in self.topics if topic not in existing]
        if missing_sources:
            raise ConfigError(
                f"source topic(s) {', '.join(map(repr, missing_sources))} do not exist: a changelog is created "
                "with its source topic's partition count, so the source topic must exist first"
            )
        present = [changelog for changelog in self.topics.values() if changelog in existing]
        layout = await _describe(admin, [*self.topics, *present])
        new_topics = [
            NewTopic(changelog, layout[topic][0], layout[topic][1], topic_configs=COMPACTED)
            for topic, changelog in self.topics.items()
            if changelog not in existing
        ]
        if new_topics:
            response = await admin.create_topics(new_topics)
            for name, code, message in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:  # another worker of the group created it just now
                    present.append(name)
                elif code:
                    raise for_code(code)(f"creating changelog topic {name!r}: {message}")
            layout |= await _describe(admin, [name for name in present if name not in layout])
        for topic, changelog in self.topics.items():
            self._partitions[changelog] = layout[changelog][0] if changelog in present else layout[topic][0]
            if self._partitions[changelog] < layout[topic][0]:
                raise ConfigError(
                    f"changelog topic {changelog!r} has {layout[changelog][0]} partitions, fewer than the "
                    f"{layout[topic][0]} of its source topic {topic!r}: the state of the others would have nowhere "
                    "to go; delete the changelog topic (losing that state) or recreate it with enough partitions"
                )


async def _describe(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, tuple[int, int]]:
    """Each topic's partition count and replication factor (the fewest replicas of any of its partitions)."""
    if not topics:
        return {}
    layout: dict[str, tuple[int, int]] = {}
    for described in await admin.describe_topics(topics):
        if described["error_code"]:
            raise for_code(described["error_code"])(f"describing topic {described['topic']!r}")
        partitions = described["partitions"]
        replicas = min((len(p["replicas"]) for p in partitions), default=1)
        layout[described["topic"]] = (len(partitions), max(replicas, 1))
    return layout


def _partition_id(partition: Partition) -> bytes:
    """A source partition's id as entries name it; it ends at the first NUL of a prefixed key, so it may hold none."""
    owner = str(partition.partition).encode()
    if b"\0" in owner:
        raise ValueError(f"{partition}: a partition id with a NUL character cannot name changelog entries")
    return owner


def _key_prefix(partition: Partition, owner: bytes) -> bytes:
    """What a partition's record keys start with: nothing for Kafka's, alone in their changelog partition; the id
    and a NUL for one named by a string, which may share its changelog partition with others."""
    return b"" if isinstance(partition.partition, int) else owner + b"\0"


def _entry(tp: TopicPartition, record: Any, owner: bytes, prefix: bytes, legacy: bool) -> ChangelogEntry | None:
    """The entry of source partition `owner` that `record` is, or None when it is another partition's (`legacy`:
    an entry without a partition header is `owner`'s)."""
    headers = dict(record.headers)
    applied = headers.get(APPLIED_HEADER)
    if record.key is None or applied is None:
        raise ValueError(
            f"{tp.topic}-{tp.partition} offset {record.offset} is not a changelog entry (no key or no "
            f"{APPLIED_HEADER} header): something else writes to this changelog topic"
        )
    named = headers.get(PARTITION_HEADER)
    if named is None:
        return ChangelogEntry(record.key, record.value, int(applied)) if legacy else None
    if named != owner:
        return None
    return ChangelogEntry(record.key[len(prefix) :], record.value, int(applied))
