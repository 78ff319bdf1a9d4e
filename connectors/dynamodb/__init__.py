"""Amazon DynamoDB: a table's stream as a source (DynamoDBStreamSource, Lambda's DynamoDB Streams event source
mapping, on the shard leases of streamfn.connectors.shards) and tables as an output (DynamoDBTable).

The classes are loaded on first use, so that `streamfn.connectors.dynamodb.dialect` (Lambda's DynamoDB Streams
rules, which the in-memory source can speak too) imports no AWS client library.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamfn.connectors.dynamodb.change import Change
    from streamfn.connectors.dynamodb.sink import DynamoDBTable
    from streamfn.connectors.dynamodb.source import DynamoDBStreamSource

__all__ = ["Change", "DynamoDBStreamSource", "DynamoDBTable"]

_MODULES = {"Change": "change", "DynamoDBStreamSource": "source", "DynamoDBTable": "sink"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
