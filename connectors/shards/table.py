"""The lease table: one DynamoDB table per function, one item per shard, every change a conditional write.

Why these choices (KCL 2.x's, see the reference's lease-table section):
- Every write but the creation is conditional on the `leaseCounter` the writer last saw, and bumps it, so the
  counter is a fencing token: a worker whose renew, checkpoint or release finds another value has lost the lease
  and learns it from `LeaseLost`; two workers can never both write a shard's checkpoint.
- botocore retries a request whose answer was lost; a retried conditional write whose first attempt went through
  then fails its own condition. The item DynamoDB returns with the failure (ALL_OLD) tells that case apart: it
  already holds exactly what this write meant to leave, so the write counts as done (KCL re-reads for renews).
- `release` removes `leaseOwner` (conditionally) so another worker takes the lease at its next scan; KCL 2.x only
  stops renewing, and others wait for the lease to expire (amazon-kinesis-client#845).
- `end` writes SHARD_END, the children and the release in one conditional write, so a finished shard is never
  owned: finished leases are never taken and never count when workers share the others out.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards.aws import AwsAccess, ensure_table, error_code
from streamfn.connectors.shards.lease import SHARD_END, Lease

TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
"""DynamoDB's rule for table names."""
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def default_table_name(app: str, function: str) -> str:
    """The lease table of a function unless configured: one per app and function (KCL: one per application),
    `streamfn-<app>-<function>` with characters DynamoDB refuses replaced by '-'."""
    return _NOT_IN_NAME.sub("-", f"streamfn-{app}-{function}")[:255]


class LeaseError(Exception):
    """Base of the lease machinery's errors."""


class LeaseLost(LeaseError):
    """A conditional write found the lease changed by someone else (taken, released, deleted): it is not ours."""

    def __init__(self, shard: str, reason: str, found: Lease | None = None) -> None:
        super().__init__(f"lease of shard {shard!r} lost: {reason}")
        self.shard = shard
        self.found = found
        """The lease as the refused write found it (None: deleted, or not known)."""


class LeaseTableError(LeaseError):
    """The table did not answer or refused for a reason other than the condition: trying again may succeed."""


class LeaseTable:
    """One function's lease table, reached through one aiobotocore DynamoDB client."""

    def __init__(self, client: Any, name: str, stack: AsyncExitStack | None = None) -> None:
        if not TABLE_NAME.match(name):
            raise ValueError(f"not a DynamoDB table name (3 to 255 letters, digits, '_', '-', '.'): {name!r}")
        self._client = client
        self.name = name
        self._stack = stack

    @classmethod
    async def open(cls, name: str, access: AwsAccess | None = None) -> LeaseTable:
        """A client for the table `name`, which is created (PAY_PER_REQUEST) when missing, once ACTIVE."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context((access or AwsAccess()).client("dynamodb"))
        table = cls(client, name, stack)
        try:
            await table.ensure()
        except BaseException:
            await stack.aclose()
            raise
        return table

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    def __str__(self) -> str:
        return f"lease table {self.name!r}"

    async def ensure(self) -> None:
        """Create the table if it does not exist, then wait until it is ACTIVE."""
        try:
            await ensure_table(self._client, self.name, [("leaseKey", "HASH", "S")])
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
            raise LeaseTableError(f"{self}: cannot be created or described: {error}") from error

    async def scan(self) -> list[Lease]:
        """Every lease, read consistently (one Scan, paginated)."""
        leases: list[Lease] = []
        try:
            paginator = self._client.get_paginator("scan")
            async for page in paginator.paginate(TableName=self.name, ConsistentRead=True):
                leases.extend(Lease.from_item(item) for item in page.get("Items", []))
        except (ClientError, BotoCoreError, OSError, TimeoutError) as error:
            raise LeaseTableError(f"{self}: Scan failed: {error}") from error
        return leases

    async def create(self, lease: Lease) -> bool:
        """Put a new lease unless one exists for the shard (then False: another worker created it first)."""
        try:
            await self._client.put_item(
                TableName=self.name, Item=lease.item(), ConditionExpression="attribute_not_exists(leaseKey)"
            )
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise LeaseTableError(f"{self}: PutItem of {lease.key!r} failed: {error}") from error
        except (BotoCoreError, OSError, TimeoutError) as error:
            raise LeaseTableError(f"{self}: PutItem of {lease.key!r} failed: {error}") from error
        return True

    async def renew(self, lease: Lease) -> Lease:
        """The heartbeat: bump the counter of a lease held since `lease` was read or written."""
        return await self._update(lease, replace(lease, counter=lease.counter + 1), "renew")

    async def take(self, lease: Lease, owner: str) -> Lease:
        """Make `owner` the holder of a lease as a Scan saw it (unowned, expired or stolen)."""
        switches = lease.owner_switches + (lease.owner != owner)
        return await self._update(
            lease, replace(lease, counter=lease.counter + 1, owner=owner, owner_switches=switches), "take"
        )

    async def checkpoint(self, lease: Lease, sequence: int) -> Lease:
        """Record that the shard is handled up to and including `sequence`."""
        done = replace(lease, counter=lease.counter + 1, checkpoint=sequence, owner_switches=0)
        return await self._update(lease, done, "checkpoint")

    async def end(self, lease: Lease, children: Collection[str]) -> Lease:
        """Record that the shard is fully handled (SHARD_END) with its children, and let go of it."""
        done = replace(
            lease,
            counter=lease.counter + 1,
            checkpoint=SHARD_END,
            owner=None,
            owner_switches=0,
            children=lease.children | frozenset(children),
        )
        return await self._update(lease, done, "shard end")

    async def release(self, lease: Lease) -> Lease:
        """Let go of a held lease so that another worker takes it at once."""
        return await self._update(lease, replace(lease, counter=lease.counter + 1, owner=None), "release")

    async def delete_ended(self, shard: str) -> bool:
        """Delete a finished lease (cleanup); False if it is gone already or not at SHARD_END."""
        try:
            await self._client.delete_item(
                TableName=self.name,
                Key=_key(shard),
                ConditionExpression="#checkpoint = :end",
                ExpressionAttributeNames={"#checkpoint": "checkpoint"},
                ExpressionAttributeValues={":end": {"S": SHARD_END}},
            )
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise LeaseTableError(f"{self}: DeleteItem of {shard!r} failed: {error}") from error
        except (BotoCoreError, OSError, TimeoutError) as error:
            raise LeaseTableError(f"{self}: DeleteItem of {shard!r} failed: {error}") from error
        return True

    async def _update(self, seen: Lease, wanted: Lease, action: str) -> Lease:
        """Turn the lease from `seen` into `wanted`, on condition that its counter is still `seen`'s."""
        update, names, values = _changes(seen, wanted)
        try:
            await self._client.update_item(
                TableName=self.name,
                Key=_key(seen.key),
                UpdateExpression=update,
                ConditionExpression="#leaseCounter = :seen",
                ExpressionAttributeNames={**names, "#leaseCounter": "leaseCounter"},
                ExpressionAttributeValues={**values, ":seen": {"N": str(seen.counter)}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise LeaseTableError(f"{self}: {action} of {seen.key!r} failed: {error}") from error
            item = error.response.get("Item")
            found = None if item is None else Lease.from_item(item)
            if found == wanted:  # a retried request whose first attempt went through
                return wanted
            if found is None:
                raise LeaseLost(seen.key, f"{action} refused (no lease any more)") from None
            holder = "nobody" if found.owner is None else repr(found.owner)
            raise LeaseLost(seen.key, f"{action} refused (held by {holder}, counter {found.counter})", found) from None
        except (BotoCoreError, OSError, TimeoutError) as error:
            raise LeaseTableError(f"{self}: {action} of {seen.key!r} failed: {error}") from error
        return wanted


def _changes(seen: Lease, wanted: Lease) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The UpdateExpression (with its names and values) that turns the item of `seen` into that of `wanted`."""
    old, new = seen.item(), wanted.item()
    sets = [name for name in new if name != "leaseKey" and old.get(name) != new[name]]
    removes = [name for name in old if name not in new]
    names = {f"#{name}": name for name in sets + removes}
    values = {f":{name}": new[name] for name in sets}
    parts = []
    if sets:
        parts.append("SET " + ", ".join(f"#{name} = :{name}" for name in sets))
    if removes:
        parts.append("REMOVE " + ", ".join(f"#{name}" for name in removes))
    return " ".join(parts), names, values


def _key(shard: str) -> dict[str, Any]:
    return {"leaseKey": {"S": shard}}
