"""Reading a record back from its shard at its sequence number: what redrive does for a letter whose payload was
dropped (streamfn.capabilities.Refill.get, Kinesis's and DynamoDB Streams').

GetShardIterator AT_SEQUENCE_NUMBER, then GetRecords. GetRecords may answer with an empty page although records
follow the iterator (AWS's GetRecords documentation: a consumer keeps calling with NextShardIterator), so one empty
page must not make a record "lost": the pages are followed, a few at most, until one holds records or the shard has
no more. A shard or position the stream no longer holds (the service's `gone` error codes) is None: lost.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards.aws import error_code
from streamfn.errors import Unreachable

READ_BACK_PAGES = 10
"""Empty pages followed before the record is taken for gone (each a GetRecords call on the shard)."""


async def record_at(
    client: Any,
    at: Mapping[str, str],
    offset: int,
    sequence_of: Callable[[dict[str, Any]], str],
    gone: Collection[str],
    description: str,
) -> dict[str, Any] | None:
    """The service's record at `offset` (`sequence_of` reads a record's sequence number); `at`: GetShardIterator's
    arguments naming the stream, the shard and `offset` (all but ShardIteratorType). None if the stream no longer
    holds it. Raises Unreachable if the service fails otherwise."""
    try:
        answer = await client.get_shard_iterator(**at, ShardIteratorType="AT_SEQUENCE_NUMBER")
        iterator = answer["ShardIterator"]
        for _ in range(READ_BACK_PAGES):
            page = await client.get_records(ShardIterator=iterator, Limit=1)
            records: list[dict[str, Any]] = page.get("Records", [])
            if records:
                return records[0] if int(sequence_of(records[0])) == offset else None
            iterator = page.get("NextShardIterator")
            if not iterator:
                return None
    except ClientError as error:
        if error_code(error) in gone:
            return None
        raise Unreachable(f"{description}: {error}") from None
    except (BotoCoreError, OSError) as error:
        raise Unreachable(f"{description}: {error}") from None
    return None
