"""KinesisSource: a function reading an Amazon Kinesis data stream, with the AWS names of a Kinesis event source
mapping (EventSourceArn, StartingPosition, StartingPositionTimestamp).

Region, endpoint and credentials: what is given here, else the AWS configuration chain (AWS_REGION, the
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB variables, the profile, the instance
role), so one pipeline runs against AWS, LocalStack or moto unchanged. A stream ARN names its region, which is used
when no region is given.

The shards are shared by every worker of a function through a lease table in DynamoDB (connectors/shards), one
per function: `lease_table`, by default "streamfn-<app>-<function>"; a worker that stops releases its leases, a
killed one's are taken after `lease_duration_seconds`. Stateful functions keep their state in a second DynamoDB
table (connectors/shards/changelog.py), `state_table`, by default "<lease table>-state".
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from streamfn.capabilities import Produced, Refill
from streamfn.config import check_starting_timestamp
from streamfn.connectors.kafka.codecs import TopicFormat
from streamfn.connectors.kinesis.api import KinesisApi
from streamfn.connectors.kinesis.dialect import KinesisDialect
from streamfn.connectors.shards import AwsAccess
from streamfn.connectors.shards.source import ShardSourceOptions

DIALECT = KinesisDialect()
_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_STREAM_ARN = re.compile(
    r"^arn:aws[a-z-]*:kinesis:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):stream/(?P<stream>[a-zA-Z0-9_.-]{1,128})$"
)


def checked_stream_arn(value: str | None) -> str | None:
    """A field validator of `stream_arn` (KinesisSource, KinesisStream)."""
    if value is not None and not _STREAM_ARN.match(value):
        raise ValueError("must be a Kinesis stream ARN, arn:aws:kinesis:<region>:<account>:stream/<name>")
    return value


def stream_name(stream: str | None, arn: str | None) -> str:
    """The stream's name, given or taken from its (validated) ARN."""
    if stream is not None:
        return stream
    found = _STREAM_ARN.match(arn or "")
    assert found is not None  # validated
    return found.group("stream")


def stream_region(arn: str | None) -> str | None:
    """The region a (validated) stream ARN names, if one is given."""
    found = _STREAM_ARN.match(arn or "")
    return found.group("region") if found else None


class KinesisSource(TopicFormat, ShardSourceOptions):
    """Where a function reads from: one Kinesis data stream. Values and keys (the partition key, as UTF-8 bytes)
    are decoded as KafkaSource's are (TopicFormat); AWS's address and the lease and state tables are every shard
    source's (ShardSourceOptions)."""

    owner = "KinesisSource"
    kind = "a Kinesis"

    stream: str | None = Field(None, pattern=_STREAM_NAME.pattern)
    stream_arn: str | None = Field(None, validation_alias=AliasChoices("stream_arn", "EventSourceArn"))
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        "TRIM_HORIZON", validation_alias=AliasChoices("starting_position", "StartingPosition")
    )
    """Where a shard without a checkpoint starts (once per lease table: the shard's first lease records it)."""
    starting_position_timestamp: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("starting_position_timestamp", "StartingPositionTimestamp")
    )

    _arn = field_validator("stream_arn")(checked_stream_arn)

    @model_validator(mode="after")
    def _consistent(self) -> KinesisSource:
        if (self.stream is None) == (self.stream_arn is None):
            raise ValueError(
                "give the stream's name (stream=) or its ARN (stream_arn= or EventSourceArn=): one of them"
            )
        check_starting_timestamp(self.starting_position, self.starting_position_timestamp)
        return self

    def __str__(self) -> str:
        return f"KinesisSource({self.stream_name!r})"

    @property
    def stream_name(self) -> str:
        return stream_name(self.stream, self.stream_arn)

    @property
    def topics(self) -> list[str]:
        return [self.stream_name]

    @property
    def dialect(self) -> KinesisDialect:
        return DIALECT

    def access(self) -> AwsAccess:
        """Region, endpoint and credentials for every client of the source (Kinesis, DynamoDB, STS)."""
        return self.aws_access(stream_region(self.stream_arn))

    def shard_api(self) -> KinesisApi:
        return KinesisApi(self.stream_name, self.access(), starting_timestamp=self.starting_position_timestamp)

    @property
    def located(self) -> str:
        return f"Kinesis stream {self.stream_name}"

    # Capabilities the command line uses (streamfn.capabilities): Producing, Refillable; LocalSystem is every shard
    # source's (ShardSourceOptions).

    async def produce_lines(
        self, stream: str, lines: Iterable[bytes], *, key_field: str | None, default_servers: str | None
    ) -> Produced:
        """PutRecords in batches (connectors/kinesis/produce.py), to `stream` where this source's stream is."""
        from streamfn.connectors.kinesis.produce import produce_lines  # only the command line produces

        return await produce_lines(stream, lines, key_field=key_field, access=self.access())

    @asynccontextmanager
    async def refill(self) -> AsyncIterator[Refill]:
        """Redrive's client: dead-lettered records back on the stream (connectors/kinesis/refill.py)."""
        from streamfn.connectors.kinesis.refill import stream_refill  # only the command line redrives

        async with stream_refill(self.stream_name, self.access()) as refill:
            yield refill
