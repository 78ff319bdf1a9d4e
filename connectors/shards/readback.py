"""Reading a record back from its shard at its sequence number: what redrive does for a letter whose payload was
dropped (streamfn.capabilities.Refill.get, Kinesis's and DynamoDB Streams').

GetRecords may answer with an empty page although records follow the iterator (AWS's GetRecords documentation: a
consumer keeps calling with NextShardIterator), so one empty page must not make a record "lost": the pages are
followed, a few at most, until one holds records or the shard has no more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

READ_BACK_PAGES = 10
"""Empty pages followed before the record is taken for gone (each a GetRecords call on the shard)."""


async def first_records(get_records: Callable[[str], Awaitable[dict[str, Any]]], iterator: str) -> list[dict[str, Any]]:
    """The records of the first page from `iterator` that has any (`get_records(iterator)` answers GetRecords'
    response); [] when the shard has nothing there, or still nothing after READ_BACK_PAGES pages."""
    for _ in range(READ_BACK_PAGES):
        page = await get_records(iterator)
        records: list[dict[str, Any]] = page.get("Records", [])
        following = page.get("NextShardIterator")
        if records or not following:
            return records
        iterator = following
    return []
