"""KafkaReader: the engine's SourceReader over one aiokafka consumer in the function's consumer group.

Offsets are committed only by the engine's checkpoint (auto-commit off). When the group has no committed offset
for a partition, the starting position is resolved once and committed at once, so it applies exactly once per
group (as Lambda's does) and a partition moving before its first record cannot skip what arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.event import KafkaEvent
from streamfn.connectors.kafka.offsets import log_ends
from streamfn.formats.codec import Codec, close_codecs, open_codecs
from streamfn.record import Partition, Record, SourceRecord
from streamfn.source import AssignmentListener

log = logging.getLogger("streamfn.kafka")


class ReaderSettings(Protocol):
    """What a reader takes from the KafkaSource that creates it (streamfn.connectors.kafka.source)."""

    @property
    def topics(self) -> list[str]: ...

    @property
    def starting_position(self) -> Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]: ...

    @property
    def starting_position_timestamp(self) -> float | None: ...

    @property
    def event_record_format(self) -> Literal["JSON", "SOURCE"]: ...

    @property
    def session_timeout_ms(self) -> int: ...

    def codecs(self) -> tuple[Codec, Codec | None]: ...


FETCH_MAX_WAIT_MS = 50
"""How long a fetch may wait at the broker for data. A partition resumed after backpressure is fetched only once
the request in flight (for partitions with nothing new) returns, so this bounds its stall; aiokafka's 500 ms
default cost a third of the throughput when partitions are paused and resumed often."""
MAX_FETCH_BYTES = 16 * 1024 * 1024
TOPIC_CREATION_WAIT_SECONDS = 2.0
"""How long start waits for the metadata of a source topic that did not exist (brokers that create topics on
first use answer within milliseconds) before saying that it was not created."""
METADATA_CHECK_SECONDS = 0.05
START_RETRY_SECONDS = 1.0
"""Between attempts to resolve a new group's starting positions (a cluster that does not answer)."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka awaits these before it rejoins, so work is settled before partitions move.

    The listener's `lost` and `ended` are never called: aiokafka has no lost-partitions callback (a member that
    missed its session rejoins and is told of a revoke), and a Kafka partition never ends."""

    def __init__(self, reader: KafkaReader, listener: AssignmentListener) -> None:
        self._reader = reader
        self._listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._reader.accepted -= revoked
        if revoked:
            await self._listener.revoked({Partition(*tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            offsets = await self._reader.settle_start_positions(assigned)
            await self._listener.assigned({Partition(*tp): offset for tp, offset in offsets.items()})
            self._reader.accepted |= assigned


class KafkaReader:
    def __init__(
        self, source: ReaderSettings, *, servers: str, group_id: str, connection: KafkaConnection | None = None
    ) -> None:
        self.source = source
        self.servers = servers
        self.group_id = group_id
        self.connection = connection
        """How to reach `servers` (TLS, SASL); a KafkaTopic on the source's cluster uses it too."""
        self.accepted: set[TopicPartition] = set()
        """Partitions the engine has a worker for; only their records are delivered."""
        self._stopping = False
        self.description = f"topics {', '.join(source.topics)} on {servers}"
        self.value_codec, self.key_codec = source.codecs()
        self._event = KafkaEvent(servers, self.value_codec, self.key_codec, source.event_record_format)
        self._options: dict[str, Any] | None = None
        """The clients' settings, read (secrets included) by the first connect() and kept for its retries."""
        self._consumer: AIOKafkaConsumer
        """Made by connect(), once the connection's secrets are read; a failed attempt leaves none behind."""

    async def connect(self) -> None:
        """Make the consumer and reach the cluster; Unreachable if it does not answer (then called again)."""
        if self._options is None:
            self._options = await client_options(self.servers, self.connection)
        consumer = AIOKafkaConsumer(
            **self._options,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.source.session_timeout_ms,
            heartbeat_interval_ms=max(self.source.session_timeout_ms // 6, 500),
            fetch_max_bytes=MAX_FETCH_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            client_id=f"streamfn-{self.group_id}",
        )
        try:
            # not subscribed yet: its metadata lists the topics that exist
            await connect(consumer, self.servers, self._options)
        except BaseException:  # a refused bootstrap is stopped by connect(); a cancelled one (the deadline) here
            await consumer.stop()
            raise
        self._consumer = consumer

    async def start(self, listener: AssignmentListener) -> None:
        """Subscribe (once connected), warning of each source topic that does not exist."""
        await open_codecs(self.value_codec, self.key_codec)
        missing = [topic for topic in self.source.topics if self._consumer.partitions_for_topic(topic) is None]
        self._consumer.subscribe(self.source.topics, listener=_Rebalance(self, listener))
        if missing:
            await self._warn_missing(missing)

    async def _warn_missing(self, topics: list[str]) -> None:
        """One warning per source topic that did not exist. Subscribing asks for its metadata, which makes brokers
        with auto-creation on (Tansu, Kafka's default) create it: the function then waits for records nobody may
        ever produce there, which a misspelt name would otherwise never tell."""
        for _ in range(round(TOPIC_CREATION_WAIT_SECONDS / METADATA_CHECK_SECONDS)):
            if all(self._consumer.partitions_for_topic(topic) is not None for topic in topics):
                break
            await asyncio.sleep(METADATA_CHECK_SECONDS)
        for topic in topics:
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions is None:
                outcome = "the function reads nothing from it until it is created"
            else:
                outcome = f"the broker created it (auto-creation, {len(partitions)} partitions) and it is empty"
            log.warning(
                "group %s: source topic %r did not exist on %s: %s; is the name right?",
                self.group_id,
                topic,
                self.servers,
                outcome,
            )

    async def fetch(self, timeout: float) -> Mapping[Partition, Sequence[SourceRecord]]:
        # TopicPartition and Partition are equal tuples, so the mapping serves both without conversion.
        fetched: dict[Any, Sequence[SourceRecord]] = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        if fetched.keys() - self.accepted:
            # aiokafka may fetch for a partition while its assignment callback is still running: give the
            # records back (rewind) so they are fetched again once the engine has a worker for it.
            assignment = self._consumer.assignment()
            for tp in fetched.keys() - self.accepted:
                records = fetched.pop(tp)
                if tp in assignment:
                    self._consumer.seek(tp, records[0].offset)
        return fetched

    def position_after(self, record: SourceRecord | Record) -> int:
        """Kafka commits the offset of the next record to process."""
        offset: int = record.offset
        return offset + 1

    def lag(self, partition: Partition, committed: int) -> int | None:
        """Records between the commit and the log end as of the last fetch (the fetch high watermark), if known."""
        end: int | None = self._consumer.highwater(TopicPartition(*partition))
        return None if end is None else max(0, end - committed)

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(TopicPartition(*partition), offset)

    def pause(self, partition: Partition) -> None:
        self._consumer.pause(TopicPartition(*partition))

    def resume(self, partition: Partition) -> None:
        self._consumer.resume(TopicPartition(*partition))

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        await self._consumer.commit({TopicPartition(*p): o for p, o in offsets.items()})

    def lambda_event(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]:
        return self._event(partition, records, decoded)

    async def stop(self) -> None:
        self._stopping = True  # an assignment still resolving its starting positions gives up
        if hasattr(self, "_consumer"):  # else connect() never succeeded: no consumer is open
            await self._consumer.stop()
        await close_codecs(self.value_codec, self.key_codec)

    async def settle_start_positions(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Every assigned partition's committed offset; where the group has none, the starting position, sought
        and committed at once."""
        committed: dict[TopicPartition, int | None] = {tp: await self._consumer.committed(tp) for tp in assigned}
        offsets = {tp: offset for tp, offset in committed.items() if offset is not None}
        fresh = [tp for tp, offset in committed.items() if offset is None]
        if not fresh:
            return offsets
        starts = await self._resolved_start_offsets(fresh)
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)
        await self._consumer.commit(starts)
        log.info(
            "group %s: no committed offsets; starting at %s (%s)",
            self.group_id,
            ", ".join(f"{tp.topic}-{tp.partition}@{o}" for tp, o in sorted(starts.items())),
            self.source.starting_position,
        )
        return offsets | starts

    async def _resolved_start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The starting positions, asked until the cluster answers. This runs in the assignment callback, whose
        errors aiokafka logs and drops: the partitions would stay assigned here and never be processed."""
        attempt = 0
        while True:
            try:
                return await self._start_offsets(partitions)
            except Exception as error:
                if self._stopping:
                    raise
                attempt += 1
                log.warning(
                    "group %s: resolving the starting position (%s) of %s failed (attempt %d): %r; retrying in %g s",
                    self.group_id,
                    self.source.starting_position,
                    ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(partitions)),
                    attempt,
                    error,
                    START_RETRY_SECONDS,
                )
                await asyncio.sleep(START_RETRY_SECONDS)

    async def _start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        position = self.source.starting_position
        if position == "TRIM_HORIZON":
            beginnings: dict[TopicPartition, int] = await self._consumer.beginning_offsets(partitions)
            return beginnings
        ends = await log_ends(self.servers, partitions, self.connection)  # not ListOffsets(latest): see offsets.py
        if position == "LATEST":
            return ends
        assert self.source.starting_position_timestamp is not None
        wanted = int(self.source.starting_position_timestamp * 1000)
        found = await self._consumer.offsets_for_times({tp: wanted for tp in partitions})
        # No record at or after the timestamp means "the end". Tansu answers that with timestamp -1.
        return {tp: ends[tp] if hit is None or hit.timestamp < 0 else hit.offset for tp, hit in found.items()}
