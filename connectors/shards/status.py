"""A shard source's status for `streamfn status` (Kinesis, DynamoDB Streams): per shard its lease (owner,
checkpoint), lineage and lag, through the source's ShardApi.

Reads only: the shards from the service's listing, the leases from one consistent Scan of the function's lease
table (which is not created when missing: then no shard has a checkpoint), and the lag from GetRecords. No lease is
taken and nothing is written, so asking never moves a shard.

The lag is milliseconds behind the tip, as IteratorAge is: 0 when no record follows the checkpoint (or the shard
ended); else, from GetRecords (Limit 1) after the checkpoint, the larger of what the service says (Kinesis's
MillisBehindLatest) and the age of that first unhandled record (now minus its arrival or creation time), at least
1. Both, because emulators (moto) measure MillisBehindLatest between records, not from now. Each shard costs one
GetShardIterator and one GetRecords (or a few while the service returns empty pages): they count against the
shard's reads with the running workers'.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.shards.aws import error_code
from streamfn.connectors.shards.lease import SHARD_END, UNSTARTED, Lease, Shard
from streamfn.connectors.shards.reader import ShardApi
from streamfn.connectors.shards.table import LeaseTable, LeaseTableError
from streamfn.errors import Unreachable
from streamfn.record import Partition
from streamfn.source import GroupStatus, PartitionStatus, ShardStatus

EMPTY_PAGES = 5
"""GetRecords calls a shard's lag may take while the service answers empty pages (old, trimmed data)."""


async def shard_status(api: ShardApi, lease_table: str, where: str) -> GroupStatus:
    """The lease table's view of the stream `api` reads; Unreachable if AWS (or the endpoint) does not answer."""
    try:
        async with api.access.client("dynamodb") as dynamodb:
            try:
                await api.connect()
            except ClientError as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise
                return GroupStatus(lease_table, where, api.missing, (), (), None)
            except Unreachable as error:  # the service's own line (DynamoDB: a table without a stream)
                return GroupStatus(lease_table, where, str(error).removeprefix(f"{api.description}: "), (), (), None)
            leases = {lease.key: lease for lease in await _leases(dynamodb, lease_table)}
            partitions = []
            shards = sorted(await api.shards(), key=lambda shard: shard.id)
            for shard in shards:
                lease = leases.get(shard.id)
                lag = await _lag(api, shard.id, lease)
                children = {s.id for s in shards if shard.id in s.parents}
                partitions.append(_partition(api.topic, shard, lease, lag, children))
    except (ClientError, BotoCoreError, OSError, LeaseTableError) as error:
        raise Unreachable(f"{where}: {error}") from None
    finally:
        await api.close()
    members = tuple(sorted({lease.owner for lease in leases.values() if lease.owner is not None}))
    return GroupStatus(lease_table, where, api.state, members, tuple(partitions), api.connection)


async def _leases(dynamodb: Any, name: str) -> list[Lease]:
    """Every lease; none when the table does not exist yet (no worker ever ran the function)."""
    try:
        return await LeaseTable(dynamodb, name).scan()
    except LeaseTableError as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and error_code(cause) == "ResourceNotFoundException":
            return []
        raise


def _partition(topic: str, shard: Shard, lease: Lease | None, lag: int, children: set[str]) -> PartitionStatus:
    """A shard's status. Its children: the shards the listing names it the parent of, and those its lease recorded
    at its end (a child past the stream's retention is no longer listed)."""
    return PartitionStatus(
        Partition(topic, shard.id),
        None if lease is None else lease.checkpoint,
        shard.start,
        shard.end,
        lag,
        ShardStatus(
            None if lease is None else lease.owner,
            shard.parents,
            tuple(sorted(children | (lease.children if lease is not None else frozenset()))),
        ),
    )


async def _lag(api: ShardApi, shard: str, lease: Lease | None) -> int:
    """Milliseconds behind the tip from the checkpoint (see the module's docstring); a shard without a lease is
    measured from its first record, as TRIM_HORIZON would read it."""
    checkpoint = lease.checkpoint if lease is not None else "TRIM_HORIZON"
    if checkpoint == SHARD_END:
        return 0
    assert isinstance(checkpoint, int) or checkpoint in UNSTARTED
    after = checkpoint if isinstance(checkpoint, int) else None
    iterator: str | None = await api.iterator(shard, after, str(checkpoint))
    behind = 0
    for _ in range(EMPTY_PAGES):
        if iterator is None:
            return 0
        page = await api.records(shard, iterator, 1)
        behind = page.behind or 0
        if page.records:
            age = round(datetime.now(UTC).timestamp() * 1000) - page.records[0].timestamp
            return max(behind, age, 1)
        if page.behind == 0:  # the service says the shard is caught up (Kinesis); DynamoDB Streams says nothing
            return 0
        iterator = page.next_iterator
    return max(behind, 1) if behind else 0
