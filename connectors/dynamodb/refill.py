"""Writing dead-lettered DynamoDB changes back to their table (`streamfn redrive`, streamfn.capabilities.Refill).

A change goes back as the write that leaves the item as the change left it **(choice)**: INSERT and MODIFY as a
PutItem of the new image, REMOVE as a DeleteItem of the keys; one at a time, acknowledged before the next, so an
item's changes go back in the order of their letters. The write lands in the source table, so the stream records it
as a new change (a new sequence number; INSERT or MODIFY by what the table holds now, a TTL deletion as an ordinary
REMOVE) and the function handles that: the point of redrive. Attribute values go back through the source's own
conversions (connectors/dynamodb/change.py to plain values, binary from base64 text to bytes; item.py back to
DynamoDB's typed form).

Refused, said for each letter, nothing written for it **(choice)**: an INSERT or MODIFY of a stream without new images
(view type KEYS_ONLY or OLD_IMAGE), which cannot be written back as it was; and a change the table holds already
(the item, read consistently, equals the new image, or is absent for a REMOVE): DynamoDB writes no stream record
for a write that changes nothing, so the function would never see it (moto records every write: the check keeps
redrive's answer the same on both). Limits: the write does not care what the item became since, so a put brings
back an image a later change replaced, and a REMOVE deletes an item created again since.

A letter without its payload is read back from its shard at its sequence number (GetShardIterator
AT_SEQUENCE_NUMBER, then GetRecords, past empty pages: connectors/shards/readback.py) as the reader stored it
(connectors/dynamodb/api.py's `stream_record`), while the stream still holds it (24 hours).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.dynamodb.api import DynamoDBStreamsApi, stream_record
from streamfn.connectors.dynamodb.change import attributes
from streamfn.connectors.dynamodb.item import Typed, serialized
from streamfn.connectors.shards.readback import record_at
from streamfn.errors import Unreachable

_PLAIN: Callable[[dict[str, Any]], Any] = TypeDeserializer().deserialize
"""An attribute value as the client returns it (binary as bytes) as a plain value (binary as boto3's Binary, equal to
the bytes change.py's `attributes` gives)."""
GONE = frozenset({"ResourceNotFoundException", "TrimmedDataAccessException"})
"""GetShardIterator's answers for a shard or sequence number the stream no longer holds."""


def _typed(values: dict[str, Any]) -> dict[str, Typed]:
    """An image or keys from Lambda's event JSON (binary as base64 text) in the typed form the client sends (binary
    as bytes). What DynamoDB wrote to its stream always converts back."""
    return serialized(attributes(values), "the image")


class TableRefill:
    """Redrive's client for one table: changes written to it, records read back from its stream."""

    def __init__(self, dynamodb: Any, streams: DynamoDBStreamsApi) -> None:
        self._dynamodb = dynamodb
        self._streams = streams
        self._table = streams.topic

    async def refusal(self, key: bytes | None, value: bytes | None) -> str | None:
        stored = orjson.loads(value or b"null")
        name, change = stored["eventName"], stored["dynamodb"]
        image = change.get("NewImage")
        if name != "REMOVE" and image is None:
            return (
                f"its {name} has no new image (stream view type {change['StreamViewType']}), so the item cannot be "
                "written back as the change left it; nothing was written"
            )
        if await self._item(change["Keys"]) != (None if image is None else attributes(image)):
            return None
        return (
            f"the item is already as this {name} left it{' (deleted)' if image is None else ''}, and DynamoDB records "
            "no change for a write that changes nothing, so the function would not see it again; nothing was written"
        )

    async def _item(self, keys: dict[str, Any]) -> dict[str, Any] | None:
        """The item with these keys now (consistent read), as plain values; None if there is none."""
        try:
            found = await self._dynamodb.get_item(TableName=self._table, Key=_typed(keys), ConsistentRead=True)
        except (ClientError, BotoCoreError, OSError) as error:
            raise Unreachable(f"DynamoDB table {self._table}: GetItem failed: {error}") from None
        item = found.get("Item")
        return None if item is None else {name: _PLAIN(value) for name, value in item.items()}

    async def put(self, partition: int | str, key: bytes | None, value: bytes | None) -> None:
        stored = orjson.loads(value or b"null")
        change = stored["dynamodb"]
        try:
            if stored["eventName"] == "REMOVE":
                await self._dynamodb.delete_item(TableName=self._table, Key=_typed(change["Keys"]))
            else:
                await self._dynamodb.put_item(TableName=self._table, Item=_typed(change["NewImage"]))
        except (ClientError, BotoCoreError, OSError) as error:
            raise Unreachable(f"DynamoDB table {self._table}: writing a change back failed: {error}") from None

    async def get(self, partition: int | str, offset: int) -> tuple[bytes | None, bytes | None] | None:
        streams = self._streams
        if streams.client is None:
            try:
                await streams.connect()
            except (ClientError, BotoCoreError, OSError) as error:
                raise Unreachable(f"{streams.description}: {error}") from None
        at = {"StreamArn": streams.connection.arn, "ShardId": str(partition), "SequenceNumber": str(offset)}
        item = await record_at(
            streams.client, at, offset, lambda r: r["dynamodb"]["SequenceNumber"], GONE, streams.description
        )
        if item is None:
            return None
        record = stream_record(self._table, str(partition), item)
        return record.key, record.value


@asynccontextmanager
async def table_refill(streams: DynamoDBStreamsApi) -> AsyncIterator[TableRefill]:
    """Writes to the stream's table; reads from `streams` (connected on the first read, closed at the end)."""
    try:
        async with streams.access.client("dynamodb") as dynamodb:
            yield TableRefill(dynamodb, streams)
    finally:
        await streams.close()
