"""Amazon Kinesis Data Streams as a source (KinesisSource): Lambda's Kinesis event source mapping, with shards shared
by many workers through a lease table in DynamoDB (streamfn.connectors.shards); and as an output (KinesisStream:
PutRecords, retrying only the entries that failed).

`KinesisSource` and `KinesisStream` are loaded on first use, so that `streamfn.connectors.kinesis.dialect` (Lambda's
Kinesis rules, which the in-memory source speaks too) imports no AWS client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamfn.connectors.kinesis.sink import KinesisStream
    from streamfn.connectors.kinesis.source import KinesisSource

__all__ = ["KinesisSource", "KinesisStream"]


def __getattr__(name: str) -> Any:
    if name == "KinesisSource":
        from streamfn.connectors.kinesis.source import KinesisSource

        return KinesisSource
    if name == "KinesisStream":
        from streamfn.connectors.kinesis.sink import KinesisStream

        return KinesisStream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
