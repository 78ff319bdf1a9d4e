"""DynamoDBTable: a DynamoDB table as a function's output, each output an item upserted by the table's key.

Why these choices:
- The key is the table's own, read from DescribeTable when the sink opens (a missing table is a ConfigError then):
  an output is a put of the item (a dict or a pydantic model) replacing the item of its key, so a batch written
  again (a retry, a replay after a crash) leaves each item once; `Delete(key)` outputs remove items.
- `key=` (optional) declares that key: "attr" or ("hash", "range"), each attribute a string unless written
  "attr:N" (number) or "attr:B" (binary). It is checked against the table when the sink opens (another key is a
  ConfigError: the outputs were written for the declared one), and on the embedded server (`streamfn run --local
  aws`, connectors/shards/local.py) a missing table is created with it, PAY_PER_REQUEST, so a pipeline runs there
  with one command; never on AWS, where tables are made with their capacity, streams and alarms on purpose.
- Values are converted by boto3's TypeSerializer, floats as the Decimal of their shortest text
  (connectors/dynamodb/item.py says which other conversions and checks apply). An output DynamoDB could never
  store (over 400 KB, an empty set, no key...) is a RejectedOutput: its input records go to on_failure
  (OutputDeliveryFailed, with the reason), before anything of the write is sent; never retried.
- Writes are BatchWriteItem requests of 25; what DynamoDB leaves unprocessed or throttles is sent again, alone,
  after the sink's SinkRetry backoff (connectors/dynamodb/writer.py). Under long throttling, `retry=SinkRetry(
  max_attempts=-1)` never gives up (the partition waits, paused).
- `position_attribute`: each item also records the source partition and position of the change that wrote it
  (`{"partition": "<topic>-<partition>", "position": "<digits>"}`), and every write is a conditional PutItem or
  DeleteItem that goes through only over an item from another source partition or an older position: a replayed
  or late (lost partition) batch never overwrites a newer change. Positions are compared as integers of any size
  (stored as digits, compared by length then text), per source partition only, as positions of different
  partitions are not ordered. It costs a request per item instead of one per 25.
  It is not `processing_guarantee="exactly_once"`: the guard is per item, with nothing stored per partition, so
  it cannot skip a replayed batch as a whole (an item the replay emits that the first run did not is written),
  and a deleted item keeps no position (an older put replayed after the delete puts it back until the replay
  reaches the delete again; a late batch of a worker that lost the partition may put it back for good).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError
from pydantic import Field, field_validator

from streamfn.connectors.dynamodb.item import KeySchema
from streamfn.connectors.dynamodb.writer import TableWriter
from streamfn.connectors.shards.aws import AwsAccess, AwsAddress, ensure_table, error_code
from streamfn.connectors.shards.local import LOCAL_ENV
from streamfn.connectors.shards.table import TABLE_NAME
from streamfn.errors import ConfigError, Unreachable
from streamfn.outputs.sink import SinkContext, SinkRetry

KEY_ATTRIBUTE = re.compile(r"^(?P<name>.*?)(?::(?P<type>[SNB]))?$", re.S)
"""A `key=` attribute: its name, and ":S", ":N" or ":B" for its type (S when not given)."""


class DynamoDBTable(AwsAddress):
    """A DynamoDB table, by name: each output (a dict or a pydantic model) is put as an item, by the table's key;
    `Delete(key)` outputs delete. Region, endpoint and credentials as KinesisStream takes them (else the AWS
    configuration chain)."""

    owner = "DynamoDBTable"
    deletes: ClassVar[bool] = True
    """Takes `Delete` outputs."""

    table: str = Field(pattern=TABLE_NAME.pattern)
    key: str | tuple[str, ...] | None = None
    """The table's key as the outputs are written for it (module docstring): checked when the sink opens, and what
    the embedded server's missing table is created with."""
    position_attribute: str | None = Field(None, min_length=1, max_length=255)
    """Conditional writes: the attribute each item keeps its change's source position in (module docstring)."""
    retry: SinkRetry = Field(default_factory=SinkRetry)

    def __init__(self, table: str | None = None, /, **values: Any) -> None:
        super().__init__(**({"table": table} if table is not None else {}), **values)

    def __str__(self) -> str:
        return f"DynamoDBTable({self.table!r})"

    @field_validator("key", mode="before")
    @classmethod
    def _key_attributes(cls, value: Any) -> Any:
        """One line for any wrong `key=` (the union's errors, one per member, would say little)."""
        if value is None or (isinstance(value, str) and _is_attribute(value)):
            return value
        if isinstance(value, list | tuple) and len(value) in (1, 2) and all(_is_attribute(a) for a in value):
            return tuple(value)
        raise ValueError(
            "must be 'attr' or ('hash', 'range'): each attribute a name of 1 to 255 bytes (a string), 'name:N' (a "
            "number) or 'name:B' (binary)"
        )

    def access(self) -> AwsAccess:
        return self.aws_access()

    def declared_key(self) -> KeySchema | None:
        """`key=` as a key schema (attributes and types, the partition key first); None if not declared."""
        if self.key is None:
            return None
        return KeySchema(tuple(_key_attribute(a) for a in ((self.key,) if isinstance(self.key, str) else self.key)))

    def check(self, source_topics: Sequence[str]) -> None:
        if self.table in source_topics:
            raise ConfigError(
                f"{self} is the table whose stream the function reads: each write would be read again as a change "
                "by the same function; use another table"
            )

    async def open(self, context: SinkContext) -> TableWriter:
        stack = AsyncExitStack()
        try:
            if self.position_attribute is not None and not context.group:
                raise ConfigError(
                    f"{self}: position_attribute={self.position_attribute!r} needs a function with a source of its "
                    "own (its positions are what the items record)"
                )
            client = await stack.enter_async_context(self.access().client("dynamodb"))
            key = await self._key(client)
            if self.position_attribute in dict(key.attributes):
                raise ConfigError(
                    f"{self}: position_attribute={self.position_attribute!r} is an attribute of the table's key "
                    f"({key}); name another attribute"
                )
        except BaseException as error:
            await stack.aclose()
            if isinstance(error, ConfigError):  # said of the function whose sink it is, as declaration errors are
                raise error.for_function(context.function) from None
            raise
        return TableWriter(client, stack, self.table, key, self.position_attribute)

    async def _key(self, client: Any) -> KeySchema:
        """The table's key schema (DescribeTable), checked against `key=`; on the embedded server a missing table
        created with `key=`; what keeps it from being read said in one line."""
        where = f"in region {client.meta.region_name}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        declared = self.declared_key()
        try:
            described = await client.describe_table(TableName=self.table)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise ConfigError(f"{self}: DescribeTable {where} failed: {error}") from None
            if not os.environ.get(LOCAL_ENV):
                raise ConfigError(f"{self}: there is no table {self.table!r} {where}") from None
            if declared is None:
                raise ConfigError(
                    f"{self}: there is no table {self.table!r} on the embedded server ({where}): declare its key, "
                    "key='attr' or key=('hash', 'range'), for the sink to create it there"
                ) from None
            return await self._create(client, declared, where)
        except (EndpointConnectionError, ConnectTimeoutError, OSError, TimeoutError) as error:
            raise Unreachable(f"{self}: DynamoDB {where} did not answer: {error}") from None
        except BotoCoreError as error:  # no credentials, no region
            raise ConfigError(f"{self}: {error}") from None
        key = KeySchema.described(described["Table"])
        if declared is not None and key != declared:
            raise ConfigError(
                f"{self}: key={self.key!r} is not the table's key, which is {key} {where}: declare "
                f"key={_declaration(key)!r}"
            )
        return key

    async def _create(self, client: Any, key: KeySchema, where: str) -> KeySchema:
        """The missing table created on the embedded server with the declared key (PAY_PER_REQUEST)."""
        try:
            await ensure_table(client, self.table, key.table_keys())
        except (ClientError, TimeoutError) as error:
            raise ConfigError(f"{self}: creating the table {where} failed: {error}") from None
        return key


def _is_attribute(declared: Any) -> bool:
    return isinstance(declared, str) and 1 <= len(_key_attribute(declared)[0].encode()) <= 255


def _key_attribute(declared: str) -> tuple[str, str]:
    """A `key=` attribute as (name, type)."""
    found = KEY_ATTRIBUTE.match(declared)
    assert found is not None  # any text matches
    return found.group("name"), found.group("type") or "S"


def _declaration(key: KeySchema) -> str | tuple[str, ...]:
    """How `key=` declares a table's key schema."""
    parts = tuple(name if kind == "S" else f"{name}:{kind}" for name, kind in key.attributes)
    return parts[0] if len(parts) == 1 else parts
