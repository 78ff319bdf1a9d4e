"""Putting records into Kafka from files: `streamfn produce` and `streamfn run --seed`."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaProducer

from streamfn.errors import ConfigError


def _key(line: bytes, key_field: str | None, where: str) -> bytes | None:
    if key_field is None:
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{where}: --key-field needs JSON lines; this line is not JSON") from None
    if not isinstance(value, dict) or key_field not in value:
        raise ConfigError(f"{where}: no field {key_field!r} for the key")
    key = value[key_field]
    return (key if isinstance(key, str) else orjson.dumps(key).decode()).encode()


async def produce_lines(
    servers: str, topic: str, lines: Iterable[bytes], *, key_field: str | None = None, source: str = "input"
) -> int:
    """Produce each non-empty line as one record's value; the key from a JSON field, if given. Returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=5, acks="all")
    await producer.start()
    count = 0
    try:
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            await producer.send(topic, line, key=_key(line, key_field, f"{source}, line {number}"))
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count
