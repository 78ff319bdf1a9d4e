"""DynamoDBStreamSource: a function reading a DynamoDB table's stream, with the AWS names of a DynamoDB Streams event
source mapping (EventSourceArn, StartingPosition).

The stream: `table=` (its latest stream, found with DescribeTable when the worker connects) or `stream_arn=`.
Region, endpoint and credentials as for every shard source (connectors/shards/source.py): given here, else AWS's
chain, where AWS_ENDPOINT_URL_DYNAMODB_STREAMS reaches the stream and AWS_ENDPOINT_URL_DYNAMODB the table and the
lease table (AWS_ENDPOINT_URL both). The shards are shared by every worker of the function through its lease
table, as for Kinesis; a stream's shards roll over on their own (about every four hours), and a child starts only
once its parent is drained, so each item's changes are handled in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Literal

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator

from streamfn.capabilities import Produced, Refill
from streamfn.connectors.dynamodb.api import STREAM_ARN, DynamoDBStreamsApi, table_of
from streamfn.connectors.dynamodb.change import change_codec, keys_codec
from streamfn.connectors.dynamodb.dialect import DynamoDBDialect
from streamfn.connectors.dynamodb.location import TableStreamLocation
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.source import ShardSourceOptions
from streamfn.connectors.shards.table import TABLE_NAME
from streamfn.formats.codec import Codec

AT_TIMESTAMP_REFUSED = "Unsupported starting position for arn type: {arn}"
"""Lambda's answer (InvalidParameterValueException) to AT_TIMESTAMP for a DynamoDB stream."""


class DynamoDBStreamSource(ShardSourceOptions):
    """Where a function reads from: the stream of one DynamoDB table. AWS's address and the lease and state tables
    are every shard source's (ShardSourceOptions). Values are Changes and keys the item's key attributes
    (connectors/dynamodb/change.py): no format to choose; a function's `value_model` validates the new images."""

    owner = "DynamoDBStreamSource"
    kind = "a DynamoDB Streams"

    table: str | None = Field(None, pattern=TABLE_NAME.pattern)
    stream_arn: str | None = Field(None, validation_alias=AliasChoices("stream_arn", "EventSourceArn"))
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        "TRIM_HORIZON", validation_alias=AliasChoices("starting_position", "StartingPosition")
    )
    """Where a shard without a checkpoint starts (once per lease table: the shard's first lease records it).
    AT_TIMESTAMP is Kinesis's only: refused as Lambda refuses it."""
    _location: TableStreamLocation = PrivateAttr(default_factory=lambda: TableStreamLocation(region=""))
    """Where the stream is once a reader has connected: the readers fill it in, the dialect's filter fields
    (`awsRegion`, `eventSourceARN`) read it."""
    _dialect: DynamoDBDialect | None = PrivateAttr(None)

    @field_validator("stream_arn")
    @classmethod
    def _arn(cls, value: str | None) -> str | None:
        if value is not None and not STREAM_ARN.match(value):
            raise ValueError(
                "must be a DynamoDB stream ARN, arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DynamoDBStreamSource:
        if (self.table is None) == (self.stream_arn is None):
            raise ValueError(
                "give the table's name (table=) or its stream's ARN (stream_arn= or EventSourceArn=): one of them"
            )
        if self.starting_position == "AT_TIMESTAMP":
            arn = self.stream_arn or f"arn:aws:dynamodb:<region>:<account>:table/{self.table}/stream/<label>"
            raise ValueError(
                f"starting_position='AT_TIMESTAMP' is invalid: {AT_TIMESTAMP_REFUSED.format(arn=arn)} "
                "(Lambda's answer: DynamoDB Streams start at TRIM_HORIZON or LATEST)"
            )
        return self

    def __str__(self) -> str:
        return f"DynamoDBStreamSource({self.table_name!r})"

    @property
    def table_name(self) -> str:
        return self.table if self.table is not None else table_of(self.stream_arn or "")

    @property
    def topics(self) -> list[str]:
        return [self.table_name]

    @property
    def dialect(self) -> DynamoDBDialect:
        if self._dialect is None:
            self._dialect = DynamoDBDialect(self._location)
        return self._dialect

    def codecs(self) -> tuple[Codec, Codec | None]:
        """Values as Changes, keys as the item's key attributes (fixed: a stream's records are always these)."""
        return change_codec(), keys_codec()

    def access(self) -> AwsAccess:
        """Region (given, else the stream ARN's), endpoint and credentials for every client of the source
        (DynamoDB Streams, DynamoDB)."""
        found = STREAM_ARN.match(self.stream_arn or "")
        return self.aws_access(found.group("region") if found else None)

    def shard_api(self) -> DynamoDBStreamsApi:
        return DynamoDBStreamsApi(self.access(), table=self.table, stream_arn=self.stream_arn, location=self._location)

    @property
    def located(self) -> str:
        return f"DynamoDB table {self.table_name}'s stream"

    # Capabilities the command line uses (streamfn.capabilities): Producing, Refillable; LocalSystem is every shard
    # source's (ShardSourceOptions).

    async def produce_lines(
        self, stream: str, lines: Iterable[bytes], *, key_field: str | None, default_servers: str | None
    ) -> Produced:
        """Each line an item written to the table `stream` where this source's table is, so that its stream holds
        the changes (connectors/dynamodb/produce.py; on the embedded server a missing table is created, keyed by
        `key_field`)."""
        from streamfn.connectors.dynamodb.produce import produce_items  # only the command line produces

        return await produce_items(stream, lines, key_field=key_field, access=self.access())

    def refill(self) -> AbstractAsyncContextManager[Refill]:
        """Redrive's client: dead-lettered changes written back to the table (connectors/dynamodb/refill.py)."""
        from streamfn.connectors.dynamodb.refill import table_refill  # only the command line redrives

        return table_refill(self.shard_api())
