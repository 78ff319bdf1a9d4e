"""The Kafka harness: a topic per stream on the session's broker, checkpoints read by an independent consumer."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import Out, create_topic, produce, read_topic, source

from conformance.harness import Letter, Put
from streamfn.connectors.kafka import KafkaSource, KafkaTopic


@dataclass
class KafkaHarnessStream:
    servers: str
    topic: str
    partitions: int
    group: str
    on_failure: KafkaTopic
    consumers: dict[str, AIOKafkaConsumer] = field(default_factory=dict)

    async def put(self, records: Sequence[Put]) -> None:
        await produce(self.servers, self.topic, [Out(r.value, key=r.key, partition=r.partition) for r in records])

    def source(self, group: str) -> KafkaSource:
        return source(self.topic, group)  # session_timeout_ms=6000: Tansu makes each join wait half of it

    async def covered(self, group: str) -> dict[int, int]:
        """The committed offset is the next record's: on a fresh topic, the count of records before it."""
        consumer = self.consumers.get(group)
        if consumer is None:  # one per group for the test (it joins nothing: no subscription)
            consumer = self.consumers[group] = AIOKafkaConsumer(
                bootstrap_servers=self.servers, group_id=group, enable_auto_commit=False
            )
            await consumer.start()
        return {p: await consumer.committed(TopicPartition(self.topic, p)) or 0 for p in range(self.partitions)}

    async def letters(self) -> list[Letter]:
        """Every letter the topic holds now (destinations deliver before the commit: all of them, once covered)."""
        found = []
        count = await self.on_failure.depth()
        for record in await read_topic(self.servers, self.on_failure.topic, count):
            letter = orjson.loads(record.value)
            ((failed,),) = letter["payload"]["records"].values()  # the event of the one failed record
            value = orjson.loads(base64.b64decode(failed["value"]))
            found.append(Letter(failed["partition"], value["id"], letter["requestContext"]["condition"]))
        return found

    async def close(self) -> None:
        for consumer in self.consumers.values():
            await consumer.stop()


@dataclass
class KafkaHarness:
    servers: str
    names: Callable[[str], str]
    """Unique topic and group names of the test (the `name` fixture)."""
    name = "kafka"
    leases = False  # a consumer group moves partitions only through a rebalance both members take part in
    shard_ends = False  # a Kafka partition never ends
    streams: list[KafkaHarnessStream] = field(default_factory=list)

    async def stream(self, partitions: int) -> KafkaHarnessStream:
        topic = self.names("t")
        await create_topic(self.servers, topic, partitions)
        stream = KafkaHarnessStream(
            self.servers,
            topic,
            partitions,
            self.names("g"),
            KafkaTopic(self.names("dlq"), bootstrap_servers=self.servers),
        )
        self.streams.append(stream)
        return stream

    async def close(self) -> None:
        for stream in self.streams:
            await stream.close()
