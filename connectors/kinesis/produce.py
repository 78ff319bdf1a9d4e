"""Putting records into a Kinesis stream from files: `streamfn produce` and `streamfn run --seed` (Producing).

PutRecords in batches of at most 500 records and 5 MB (Kinesis's limits), in file order; entries a batch reports
failed (throttled) are put again, alone, after a backoff, so a line is never put twice by this command. The
partition key is the JSON field `key_field` when given and present, else the MD5 of the line (hex): equal lines
go to one shard, different lines spread over the shards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from streamfn.capabilities import Produced
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.local import LOCAL_ENV
from streamfn.errors import ConfigError, Unreachable

MAX_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
"""Data plus partition key of one record."""
MAX_KEY_CHARS = 256
LOCAL_SHARDS = 4
"""The shards of a stream the embedded server creates for a seed (streamfn run --local aws)."""
RETRY_SECONDS = 0.2
ATTEMPTS = 10


def partition_key(line: bytes, key_field: str | None) -> tuple[str, bool]:
    """The record's partition key, and whether it came from `key_field`."""
    if key_field is not None:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and key_field in value:
            key = value[key_field]
            text = key if isinstance(key, str) else orjson.dumps(key).decode()
            if 0 < len(text) <= MAX_KEY_CHARS:
                return text, True
    return hashlib.md5(line, usedforsecurity=False).hexdigest(), False


async def produce_lines(stream: str, lines: Iterable[bytes], *, key_field: str | None, access: AwsAccess) -> Produced:
    count = unkeyed = 0
    created = None
    try:
        async with access.client("kinesis") as kinesis:
            if os.environ.get(LOCAL_ENV) and await _create_missing(kinesis, stream):
                created = f"stream {stream} with {LOCAL_SHARDS} shards"
            batch: list[dict[str, Any]] = []
            size = 0
            for raw in lines:
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                key, keyed = partition_key(line, key_field)
                unkeyed += key_field is not None and not keyed
                entry_size = len(line) + len(key.encode())
                if entry_size > MAX_RECORD_BYTES:
                    raise ConfigError(f"line {count + 1} is {entry_size} bytes: over Kinesis's 1 MiB per record")
                if len(batch) == MAX_RECORDS or size + entry_size > MAX_BATCH_BYTES:
                    await _put(kinesis, stream, batch)
                    batch, size = [], 0
                batch.append({"Data": line, "PartitionKey": key})
                size += entry_size
                count += 1
            if batch:
                await _put(kinesis, stream, batch)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise ConfigError(f"Kinesis stream {stream!r} does not exist") from None
        raise Unreachable(f"Kinesis stream {stream}: {error}") from None
    except (BotoCoreError, OSError) as error:
        raise Unreachable(f"Kinesis stream {stream}: {error}") from None
    return Produced(count, unkeyed, kind="stream", created=created)


async def _put(kinesis: Any, stream: str, entries: list[dict[str, Any]]) -> None:
    """Put the entries, again only those that failed (throttles), until all are in."""
    for attempt in range(ATTEMPTS):
        answer = await kinesis.put_records(StreamName=stream, Records=entries)
        if not answer.get("FailedRecordCount"):
            return
        results = answer["Records"]
        entries = [entry for entry, result in zip(entries, results, strict=True) if "ErrorCode" in result]
        await asyncio.sleep(RETRY_SECONDS * 2**attempt)
    raise Unreachable(f"Kinesis stream {stream}: {len(entries)} records still refused after {ATTEMPTS} attempts")


async def _create_missing(kinesis: Any, stream: str) -> bool:
    """Create `stream` on the embedded server if it does not exist, then wait until it is ACTIVE; True if created."""
    try:
        await kinesis.describe_stream_summary(StreamName=stream)
        return False
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    await kinesis.create_stream(StreamName=stream, ShardCount=LOCAL_SHARDS)
    await kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 1})
    return True
