"""Redrive: put dead letters back on their source topic, once.

Each dead letter's original record (key, value from the Lambda-format payload, headers without the streamfn.*
provenance) is produced to the topic and partition it came from. Progress is committed in the consumer group
`<function's group>-redrive` after the produced records are acknowledged, so running redrive again resumes
after what it already redrove and never produces a record twice (short of a crash between the two steps).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.destination import PROVENANCE_PREFIX

IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Redriven:
    topic: str
    partition: int
    offset: int
    """Where the record was when it failed."""
    condition: str


def original(letter: ConsumerRecord[bytes, bytes]) -> tuple[str, int, bytes | None, list[tuple[str, bytes]], Redriven]:
    headers = dict(letter.headers)
    topic = headers["streamfn.source.topic"].decode()
    partition = int(headers["streamfn.source.partition"])
    offset = int(headers["streamfn.source.offset"])
    body = orjson.loads(letter.value) if letter.value is not None else {}
    (record,) = body["payload"]["records"][f"{topic}-{partition}"]
    value = base64.b64decode(record["value"]) if "value" in record else None
    kept = [(name, value) for name, value in letter.headers if not name.startswith(PROVENANCE_PREFIX)]
    return (
        topic,
        partition,
        value,
        kept,
        Redriven(topic, partition, offset, headers["streamfn.error.condition"].decode()),
    )


async def redrive(
    servers: str,
    dead_letter_topic: str,
    group: str,
    *,
    limit: int | None,
    dry_run: bool,
    connection: KafkaConnection | None = None,
) -> list[Redriven]:
    options = await client_options(servers, connection)
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**options, acks="all", max_request_size=16 * 1024 * 1024)
    await connect(consumer, servers, options)
    await producer.start()
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
                for letter in letters:
                    topic, partition, value, headers, what = original(letter)
                    if not dry_run:
                        sent.append(
                            await producer.send(topic, value, key=letter.key, partition=partition, headers=headers)
                        )
                    done.append(what)
                    offsets[tp] = letter.offset + 1
            for delivery in sent:
                await delivery  # acknowledged before the redrive's progress is committed
            if not dry_run:
                await consumer.commit(offsets)
    finally:
        await producer.stop()
        await consumer.stop()
    return done


async def _caught_up(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """Every partition read to its high watermark (known once fetched)."""
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True
