"""KafkaTopic: a topic as an on_failure destination (dead letters) and as an output (a queue between functions).

As an output, each output is one record: the value encoded by `streamfn.outputs.sink.encode` (JSON unless it is already
str or bytes; None stays a tombstone), the output's key, and headers carrying its provenance and trace context.
All records of a batch are sent, then awaited together (acks=all) before the batch counts as written.

As a destination, one dead letter per failed record, in Lambda's layout (connectors/kafka/letter.py), never
larger than `max_message_bytes`: the key is the original key; headers are the original ones plus `streamfn.*`
provenance, so dead letters can be filtered and redriven without parsing the value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from pydantic import Field, model_validator

from streamfn.capabilities import Redriven, Refillable
from streamfn.connectors.kafka.codecs import TopicFormat
from streamfn.connectors.kafka.connection import SERVERS_ENV, KafkaConnection, join_servers, with_connection_servers
from streamfn.connectors.kafka.letter import dead_letter
from streamfn.connectors.kafka.offsets import offset_ranges, unreachable
from streamfn.connectors.kafka.producer import LazyProducer
from streamfn.errors import ConfigError
from streamfn.failures.model import FailedRecord, FailureOrigin
from streamfn.formats.codec import Codec, close_codecs, open_codecs
from streamfn.outputs.sink import Emitted, SinkContext, SinkRetry

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
"""aiokafka's default max_request_size, and Kafka's default max.message.bytes (1 MiB, give or take 12 bytes)."""


@runtime_checkable
class OnKafka(Protocol):
    """A source on a Kafka cluster (KafkaSource, which imports this module): where redrive puts records back."""

    connection: KafkaConnection | None

    def servers(self, default_servers: str | None) -> str | None: ...


class KafkaTopic(TopicFormat):
    """A Kafka topic, on the source's cluster unless `bootstrap_servers` names another; as an output, written in
    TopicFormat's value and key formats."""

    owner = "KafkaTopic"

    topic: str
    bootstrap_servers: str | list[str] | None = None
    connection: KafkaConnection | None = None
    """TLS and SASL settings (and possibly the servers); without, a topic on its function's source cluster is
    reached as the source is, one on another cluster by the STREAMFN_KAFKA_* environment variables."""
    retry: SinkRetry = Field(default_factory=SinkRetry)
    """As an output: how long a failing write is retried before its input records go to on_failure."""
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=16 * 1024, le=2**31 - 1)
    """As a destination: the largest dead letter it writes (set it to the topic's max.message.bytes; the producer's
    max_request_size follows). A letter that would be larger leaves out its payload and says so."""

    def __init__(self, topic: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"topic": topic} if topic is not None else {}), **values)

    def __str__(self) -> str:
        return f"KafkaTopic({self.topic!r})"

    _connection_servers = model_validator(mode="before")(with_connection_servers)

    def reached(self, source_connection: KafkaConnection | None) -> KafkaConnection | None:
        """Its own connection; else, on its function's source cluster, the source's."""
        return self.connection or (source_connection if self.bootstrap_servers is None else None)

    def check(self, source_topics: Sequence[str]) -> None:
        if self.topic in source_topics and self.bootstrap_servers is None:
            raise ConfigError(
                f"{self} is the function's own source topic: what it writes there would be read again by the "
                "same function (Lambda refuses this for on_failure too); use another topic"
            )

    def servers(self, source_servers: str | None) -> str | None:
        """Its own cluster if it names one, else its function's source cluster."""
        return join_servers(self.bootstrap_servers) or source_servers

    def _cluster(self, source_connection: KafkaConnection | None) -> tuple[str | None, KafkaConnection | None]:
        """Where it is written (its servers) and how it is reached, for a function whose source is reached
        through `source_connection` (which names the source's cluster)."""
        if not isinstance(source_connection, KafkaConnection):  # no source, or not on Kafka (a Kinesis stream)
            return self.servers(None), self.connection
        return self.servers(join_servers(source_connection.bootstrap_servers)), self.reached(source_connection)

    async def open(self, context: SinkContext) -> TopicWriter:
        servers, connection = self._cluster(context.connection)
        if servers is None:
            raise ConfigError(f"{self} has no bootstrap servers to write to")
        value, key = self.codecs()
        writer = TopicWriter(self.topic, LazyProducer(servers, connection), value, key)
        await writer.open()
        return writer

    async def open_destination(self, source_connection: KafkaConnection | None = None) -> LetterWriter:
        """One function's dead letters: a producer of its own (started on the first delivery), so that functions
        sharing this declaration never share, or stop, each other's client."""
        servers, connection = self._cluster(source_connection)
        if servers is None:
            raise ConfigError(f"{self} has no bootstrap servers to write dead letters to")
        producer = LazyProducer(servers, connection, max_request_bytes=self.max_message_bytes)
        return LetterWriter(self.topic, producer, self.max_message_bytes)

    async def depth(self, source_connection: KafkaConnection | None = None) -> int:
        """Records in the topic now: over its partitions, the true end minus the beginning offset (0 if the topic
        does not exist yet: it is created by its first dead letter)."""
        servers, connection = self._cluster(source_connection)
        if servers is None:
            raise ConfigError(f"{self} has no bootstrap servers to count its records on")
        with unreachable(f"topic {self.topic!r}", servers):
            ranges = await offset_ranges(servers, [self.topic], connection)
        return sum(end - beginning for beginning, end in ranges.values())

    @property
    def letters(self) -> str:
        return self.topic

    async def redrive(
        self, source: Any, *, group: str, limit: int | None, dry_run: bool, default_servers: str | None
    ) -> list[Redriven]:
        """The command line's Redrivable capability (streamfn.capabilities): the letters' records back to their
        topics and partitions on the source's cluster (connectors/kafka/redrive.py)."""
        from streamfn.connectors.kafka.redrive import RefillTarget, redrive, redrive_letters  # only the command line

        if isinstance(source, Refillable):  # a source on another system (a Kinesis stream): its own client
            servers = self.servers(default_servers)
            if servers is None:
                raise ConfigError(f"redrive needs --bootstrap-servers or {SERVERS_ENV}: where {self} is")
            async with source.refill() as refill:
                target = RefillTarget(refill)
                return await redrive_letters(
                    servers, self.topic, group, target, limit=limit, dry_run=dry_run, connection=self.connection
                )
        if not isinstance(source, OnKafka):
            raise ConfigError(f"{self} redrives records into Kafka topics; the function's source is not on Kafka")
        source_servers = source.servers(default_servers)
        servers = self.servers(source_servers or default_servers)
        if servers is None:
            raise ConfigError(f"redrive needs --bootstrap-servers or {SERVERS_ENV} (the embedded broker keeps nothing)")
        return await redrive(
            servers,
            self.topic,
            group,
            source_servers=source_servers or servers,
            limit=limit,
            dry_run=dry_run,
            connection=self.reached(source.connection),
            source_connection=source.connection,
        )


class LetterWriter:
    """A KafkaTopic opened as one function's on_failure destination: one dead letter per failed record."""

    def __init__(self, topic: str, producer: LazyProducer, max_message_bytes: int) -> None:
        self._topic = topic
        self._producer = producer
        self._max_message_bytes = max_message_bytes

    async def deliver(self, origin: FailureOrigin, failures: Sequence[FailedRecord]) -> None:
        producer = await self._producer.get()
        sent = []
        for f in failures:
            letter = dead_letter(origin, f, self._max_message_bytes)
            sent.append(await producer.send(self._topic, letter.value, key=letter.key, headers=letter.headers))
        for delivery in sent:
            await delivery  # acknowledged by the broker (acks=all) before the source's offset may move

    async def close(self) -> None:
        await self._producer.stop()


class TopicWriter:
    """A KafkaTopic opened as one function's output.

    Records are appended to one producer batch per partition (aiokafka's batch API: about twice the rate of a
    `send()` per record, measured) and all batches are awaited together. Keyed records go to the partition Kafka's
    default partitioner picks (murmur2, as the Java client), so a key's records stay in one partition, in order;
    the keyless records of one write go to one partition, the next write's to the next (sticky, as Kafka's).
    """

    def __init__(self, topic: str, producer: LazyProducer, value_codec: Codec, key_codec: Codec | None) -> None:
        self._topic = topic
        self._producer = producer
        self._value_codec = value_codec
        self._key_codec = key_codec
        self._partitioner = DefaultPartitioner()
        self._sticky = 0

    async def open(self) -> None:
        await open_codecs(self._value_codec, self._key_codec)

    async def write(self, outputs: Sequence[Emitted]) -> None:
        topic = self._topic
        values = await self._value_codec.encode([o.value for o in outputs], topic)
        keys: Sequence[bytes | None] = [o.key for o in outputs]
        if self._key_codec is not None:
            keys = await self._key_codec.encode(keys, topic)
        producer = await self._producer.get()
        partitions = sorted(await producer.partitions_for(topic))
        self._sticky += 1
        keyless = partitions[self._sticky % len(partitions)]
        open_batches: dict[int, BatchBuilder] = {}
        sent: list[asyncio.Future[Any]] = []
        for o, key, value in zip(outputs, keys, values, strict=True):
            partition = keyless if key is None else self._partitioner(key, partitions, partitions)
            headers = list(o.headers)  # the batch builder takes a list only
            batch = open_batches.get(partition)
            if batch is None or batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if batch is not None:  # full: send it and start the next
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)  # the first always fits
        for partition, batch in open_batches.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)  # acknowledged by the broker (acks=all) before the batch counts as written

    async def close(self) -> None:
        await self._producer.stop()
        await close_codecs(self._value_codec, self._key_codec)
