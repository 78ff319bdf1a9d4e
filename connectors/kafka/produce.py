"""Putting records into Kafka from files: `streamfn produce` and `streamfn run --seed`."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaProducer

from streamfn.capabilities import Produced
from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options


def _key(line: bytes, key_field: str | None) -> bytes | None:
    """The key from a JSON object's field; None when the line is no JSON object or lacks the field."""
    if key_field is None:
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or key_field not in value:
        return None
    key = value[key_field]
    return (key if isinstance(key, str) else orjson.dumps(key).decode()).encode()


async def produce_lines(
    servers: str,
    topic: str,
    lines: Iterable[bytes],
    *,
    key_field: str | None = None,
    connection: KafkaConnection | None = None,
) -> Produced:
    """Produce each non-empty line as one record's value, keyed by a JSON field if given."""
    options = await client_options(servers, connection)
    producer = AIOKafkaProducer(**options, linger_ms=5, acks="all")
    count = unkeyed = 0
    try:
        await connect(producer, servers, options)
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            key = _key(line, key_field)
            unkeyed += key_field is not None and key is None
            await producer.send(topic, line, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return Produced(count, unkeyed)
