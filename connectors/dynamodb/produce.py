"""Writing items into a DynamoDB table from files, so that its stream holds one change per line: `streamfn produce`
and `streamfn run --seed` for a DynamoDBStreamSource (Producing).

Each non-empty line is a JSON object put as one item, its attributes converted as the DynamoDBTable sink converts
outputs (connectors/dynamodb/item.py: floats as the Decimal of their text, the same checks). The items go in file
order, in BatchWriteItem requests of 25; what DynamoDB leaves unprocessed is sent again, alone, after a backoff,
so a line is written once by this command. A line whose key an earlier line of the same request has starts the
next request: each line is its own write, so an item written twice is an INSERT then a MODIFY in the stream
(BatchWriteItem refuses a key twice in one request). A line that is not a JSON object, lacks a key attribute of
the table or could never be stored is a ConfigError naming its line number (the lines before it are written).

On the embedded server (`run --local aws`, LOCAL_ENV) a missing table is created, PAY_PER_REQUEST, with a
NEW_AND_OLD_IMAGES stream and `key_field` as its partition key, of type S or N as the first line's value of it is;
never on AWS.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from streamfn.capabilities import Produced
from streamfn.connectors.dynamodb.item import Invalid, KeySchema, identity, put_item
from streamfn.connectors.dynamodb.writer import MAX_REQUEST_ITEMS
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.aws import ensure_table, error_code
from streamfn.connectors.shards.local import LOCAL_ENV
from streamfn.errors import ConfigError, Unreachable

"""BatchWriteItem's limit."""
LOCAL_VIEW_TYPE = "NEW_AND_OLD_IMAGES"
"""The stream of a table the embedded server creates for a seed: every image, as most pipelines want."""
RETRY_SECONDS = 0.2
ATTEMPTS = 10

Line = tuple[int, dict[str, Any]]
"""A line's number in the file (from 1) and its JSON object."""


def objects(lines: Iterable[bytes]) -> Iterator[Line]:
    """Each non-empty line's JSON object, with its line number; a ConfigError for one that is not an object."""
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ConfigError(f"line {number} is not a JSON object: each line is one item of the table")
        yield number, value


def as_item(line: Line, key: KeySchema) -> tuple[dict[str, Any], dict[str, Any]]:
    """A line's object as an item and its key in DynamoDB's typed form; a ConfigError naming the line."""
    number, value = line
    try:
        return put_item(value, key, "a line")
    except Invalid as problem:
        raise ConfigError(f"line {number} {problem}") from None


async def produce_items(table: str, lines: Iterable[bytes], *, key_field: str | None, access: AwsAccess) -> Produced:
    count = 0
    items = objects(lines)
    try:
        async with access.client("dynamodb") as client:
            first = next(items, None)
            key, created = await _table_key(client, table, key_field, first)
            request: list[dict[str, Any]] = []
            keys: set[tuple[Any, ...]] = set()
            for line in itertools.chain([first] if first is not None else [], items):
                item, item_key = as_item(line, key)
                written = identity(item_key)
                if len(request) == MAX_REQUEST_ITEMS or written in keys:
                    await _write(client, table, request)
                    request, keys = [], set()
                request.append({"PutRequest": {"Item": item}})
                keys.add(written)
                count += 1
            if request:
                await _write(client, table, request)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise ConfigError(f"DynamoDB table {table!r} does not exist") from None
        if error_code(error) == "ValidationException":  # what the checks of each line did not foresee
            raise ConfigError(f"DynamoDB table {table!r} refused an item: {error}") from None
        raise Unreachable(f"DynamoDB table {table}: {error}") from None
    except (BotoCoreError, OSError) as error:
        raise Unreachable(f"DynamoDB table {table}: {error}") from None
    return Produced(count, 0, kind="table", created=created)


async def _table_key(
    client: Any, table: str, key_field: str | None, first: Line | None
) -> tuple[KeySchema, str | None]:
    """The table's key, and what was created: the table, on the embedded server, when it is missing."""
    try:
        key = KeySchema.described((await client.describe_table(TableName=table))["Table"])
    except ClientError as error:
        if error_code(error) != "ResourceNotFoundException" or not os.environ.get(LOCAL_ENV):
            raise
    else:
        if key_field is not None and key_field not in dict(key.attributes):
            raise ConfigError(f"--key-field {key_field!r} is not in the key of DynamoDB table {table!r} ({key})")
        return key, None
    if key_field is None:
        raise ConfigError(
            f"DynamoDB table {table!r} does not exist on the embedded server: give --key-field, which names the "
            "partition key to create it with"
        )
    kind = "S" if first is None else _key_type(first, key_field)
    key = KeySchema(((key_field, kind),))
    await ensure_table(client, table, key.table_keys(), stream_view_type=LOCAL_VIEW_TYPE)
    return key, f"table {table} with a {LOCAL_VIEW_TYPE} stream"


def _key_type(line: Line, key_field: str) -> str:
    """The partition key's type (S or N) from the first line's value of `key_field`."""
    number, value = line
    if key_field not in value:
        raise ConfigError(f"line {number} has no {key_field!r} field: --key-field names the table's partition key")
    found = value[key_field]
    if isinstance(found, str):
        return "S"
    if isinstance(found, int | float) and not isinstance(found, bool):
        return "N"
    raise ConfigError(
        f"line {number} has {key_field!r} = {orjson.dumps(found).decode()}: a partition key is a string or a number"
    )


async def _write(client: Any, table: str, requests: list[dict[str, Any]]) -> None:
    """One BatchWriteItem, then again only what DynamoDB left unprocessed, until all is written."""
    for attempt in range(ATTEMPTS):
        answer = await client.batch_write_item(RequestItems={table: requests})
        requests = answer.get("UnprocessedItems", {}).get(table, [])
        if not requests:
            return
        await asyncio.sleep(RETRY_SECONDS * 2**attempt)
    raise Unreachable(f"DynamoDB table {table}: {len(requests)} items still unprocessed after {ATTEMPTS} attempts")
