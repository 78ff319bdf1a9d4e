"""The writer of one function's outputs to one DynamoDB table (see DynamoDBTable for the choices).

Every output of a write is made an item (or a deletion) and checked first: one DynamoDB could never store rejects
the write before anything is sent. Then one write per key is left (the last output of a key wins: BatchWriteItem
refuses a key twice in one request, and the last is what writing them in order would leave), sent

- as BatchWriteItem requests of 25 (PutRequest, DeleteRequest): an upsert by the table's key, so a batch written
  again leaves each item once;
- or, with a position attribute, as conditional PutItem / DeleteItem calls, 25 at a time (BatchWriteItem takes no
  conditions): each writes only over an item last written from another source partition or from an older position
  of this one, so a replayed or late batch never overwrites a newer change. ConditionalCheckFailed means the item
  already holds a newer (or this same) change: done.

What DynamoDB did not take (UnprocessedItems, throttling past botocore's own retries, an unreachable endpoint) fails
the write with DynamoDBDeliveryError once every request was tried; the engine retries the write per the sink's
SinkRetry backoff, and the writer, remembering which outputs DynamoDB acknowledged, sends only the rest.
A ValidationException (what the checks above did not foresee) is a RejectedOutput: no retry could fix it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.dynamodb.item import Item, KeySchema, Typed, identity, item_of
from streamfn.connectors.shards.aws import error_code
from streamfn.outputs.sink import Delivered, Emitted, RejectedOutput
from streamfn.record import Partition

log = logging.getLogger("streamfn.dynamodb")

MAX_REQUEST_ITEMS = 25
"""BatchWriteItem's limit (25 items, at most 16 MB: 25 items of 400 KB fit)."""
REMEMBERED_OUTPUTS = 10_000
"""Acknowledged output ids a writer remembers, to skip them when a failed write is retried."""
PARTITION, POSITION = "partition", "position"
"""The fields of the position attribute's map."""
NEWER = "attribute_not_exists(#p) OR #p.#s <> :s OR size(#p.#o) < :n OR (size(#p.#o) = :n AND #p.#o < :o)"
"""The condition of a write with a position: no position yet, one of another source partition, or an older one of
this partition (positions are stored as decimal digits, so a shorter text is a smaller number)."""


class DynamoDBDeliveryError(Exception):
    """A write DynamoDB did not acknowledge in full but may on another attempt (unprocessed, throttled, unreachable)."""


@dataclass(slots=True)
class Write:
    """The one write of a key in a write: its item, and every output it stands for (a key's earlier ones too)."""

    item: Item
    outputs: list[str] = field(default_factory=list)
    position: tuple[str, str] | None = None
    """(source partition, position digits) of the condition, with a position attribute."""


def position_of(output: Emitted) -> tuple[str, str]:
    """(source partition, checkpoint value as decimal digits) of an output: what its item records and is compared by.
    The value is the source's checkpoint covering the output's last record (`Provenance.covers`), an integer of any
    size (Kafka offsets, Kinesis and DynamoDB Streams sequence numbers of up to 40 digits and more)."""
    covers = output.source.covers
    if not isinstance(covers, int) or covers < 0:
        raise RejectedOutput(
            f"output {output.id} has no source position to write with (got {covers!r}): a position attribute needs "
            "the outputs of a function with a source of its own"
        )
    return str(Partition(output.source.topic, output.source.partition)), str(covers)


def writes(outputs: Sequence[Emitted], key: KeySchema, position_attribute: str | None) -> list[Write]:
    """One write per key, the key's last output winning in the place of its first; RejectedOutput for the first
    output DynamoDB could never store (checked before anything is sent)."""
    by_key: dict[tuple[Any, ...], Write] = {}
    for output in outputs:
        position, attribute = None, None
        if position_attribute is not None:
            position = position_of(output)
            attribute = (position_attribute, {"M": {PARTITION: {"S": position[0]}, POSITION: {"S": position[1]}}})
        item = item_of(output, key, attribute)
        write = by_key.get(item.identity)
        if write is None:
            write = by_key[item.identity] = Write(item)
        write.item, write.position = item, position
        write.outputs.append(output.id)
    return list(by_key.values())


def requests(items: Sequence[Write]) -> Iterator[Sequence[Write]]:
    for start in range(0, len(items), MAX_REQUEST_ITEMS):
        yield items[start : start + MAX_REQUEST_ITEMS]


class TableWriter:
    """Writes one function's outputs to one table with its own aiobotocore client."""

    def __init__(
        self, client: Any, stack: AsyncExitStack, table: str, key: KeySchema, position_attribute: str | None
    ) -> None:
        self._client = client
        self._stack = stack
        self._table = table
        self._key = key
        self._position_attribute = position_attribute
        self._delivered = Delivered(REMEMBERED_OUTPUTS)

    def __str__(self) -> str:
        return f"DynamoDBTable({self._table!r})"

    async def write(self, outputs: Sequence[Emitted]) -> None:
        pending = writes([o for o in outputs if o.id not in self._delivered], self._key, self._position_attribute)
        failed: Counter[str] = Counter()
        rejected: list[str] = []
        for request in requests(pending):
            if self._position_attribute is None:
                await self._batch(request, failed, rejected)
            else:
                await self._conditional(request, failed, rejected)
        if rejected:
            raise RejectedOutput(f"{self}: DynamoDB refused {rejected[0]}")
        if failed:
            codes = ", ".join(f"{count} {code}" for code, count in sorted(failed.items()))
            raise DynamoDBDeliveryError(
                f"{self}: DynamoDB did not take {failed.total()} of {len(pending)} writes ({codes}); only those are "
                "sent again"
            )

    async def _batch(self, request: Sequence[Write], failed: Counter[str], rejected: list[str]) -> None:
        """One BatchWriteItem; what it processed is remembered, the rest counted in `failed` (by why)."""
        entries = [
            {"PutRequest": {"Item": w.item.item}} if w.item.item is not None else {"DeleteRequest": {"Key": w.item.key}}
            for w in request
        ]
        try:
            response = await self._client.batch_write_item(RequestItems={self._table: entries})
        except ClientError as error:
            if error_code(error) == "ValidationException":
                first, last = request[0].outputs[0], request[-1].outputs[-1]
                rejected.append(f"output {first}: {error}" if first == last else f"outputs {first}..{last}: {error}")
            else:
                failed[error_code(error) or "ClientError"] += len(request)
            return
        except (BotoCoreError, OSError, TimeoutError) as error:
            failed[type(error).__name__] += len(request)
            return
        unprocessed = {
            identity(_key_in(entry, self._key)) for entry in response.get("UnprocessedItems", {}).get(self._table, [])
        }
        for write in request:
            if write.item.identity in unprocessed:
                failed["UnprocessedItems"] += 1
            else:
                self._done(write)

    async def _conditional(self, request: Sequence[Write], failed: Counter[str], rejected: list[str]) -> None:
        """Conditional PutItem / DeleteItem calls, concurrently; an item already newer counts as written."""
        outcomes = await asyncio.gather(*(self._put_if_newer(write) for write in request))
        older = 0
        for write, outcome in zip(request, outcomes, strict=True):
            if outcome in ("", "ConditionalCheckFailedException"):
                older += outcome != ""
                self._done(write)
            elif outcome.startswith("ValidationException"):
                rejected.append(f"output {write.outputs[-1]}: {outcome}")
            else:
                failed[outcome] += 1
        if older:
            log.info(
                "%s: %d of %d items already held a newer change (a replayed or late batch): left as they were",
                self,
                older,
                len(request),
            )

    async def _put_if_newer(self, write: Write) -> str:
        """ "" once written, else the error code (ValidationException with its message)."""
        assert write.position is not None and self._position_attribute is not None
        partition, digits = write.position
        condition: dict[str, Any] = {
            "ConditionExpression": NEWER,
            "ExpressionAttributeNames": {"#p": self._position_attribute, "#s": PARTITION, "#o": POSITION},
            "ExpressionAttributeValues": {":s": {"S": partition}, ":n": {"N": str(len(digits))}, ":o": {"S": digits}},
        }
        try:
            if write.item.item is None:
                await self._client.delete_item(TableName=self._table, Key=write.item.key, **condition)
            else:
                await self._client.put_item(TableName=self._table, Item=write.item.item, **condition)
        except ClientError as error:
            code = error_code(error) or "ClientError"
            return f"{code}: {error}" if code == "ValidationException" else code
        except (BotoCoreError, OSError, TimeoutError) as error:
            return type(error).__name__
        return ""

    def _done(self, write: Write) -> None:
        for output in write.outputs:
            self._delivered.add(output)

    async def close(self) -> None:
        await self._stack.aclose()


def _key_in(entry: dict[str, Any], key: KeySchema) -> dict[str, Typed]:
    """The key of an UnprocessedItems entry (a PutRequest's item or a DeleteRequest's key)."""
    attributes = entry["PutRequest"]["Item"] if "PutRequest" in entry else entry["DeleteRequest"]["Key"]
    return {name: attributes[name] for name, _ in key.attributes}
