"""Amazon DynamoDB: a table's stream as a source (DynamoDBStreamSource, Lambda's DynamoDB Streams event source
mapping, on the shard leases of streamfn.connectors.shards) and tables as an output (DynamoDBTable).

The classes are loaded on first use, so that `streamfn.connectors.dynamodb.dialect` (Lambda's DynamoDB Streams
rules, which the in-memory source can speak too) imports no AWS client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamfn.connectors.dynamodb.sink import DynamoDBTable

__all__ = ["DynamoDBTable"]


def __getattr__(name: str) -> Any:
    if name == "DynamoDBTable":
        from streamfn.connectors.dynamodb.sink import DynamoDBTable

        return DynamoDBTable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
