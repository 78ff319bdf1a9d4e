"""A Kinesis function's status for `streamfn status`: per shard its lease (owner, checkpoint), lineage and lag.

Reads only: the shards from ListShards, the leases from one consistent Scan of the function's lease table (which is
not created when missing: then no shard has a checkpoint), and the lag from GetRecords. No lease is taken and
nothing is written, so asking never moves a shard.

The lag is milliseconds behind the tip, as IteratorAge is: 0 when no record follows the checkpoint (or the shard
ended); else, from one GetRecords (Limit 1) after the checkpoint, the larger of its MillisBehindLatest and the age
of that first unhandled record (now minus its approximate arrival), at least 1. Both, because emulators (moto)
measure MillisBehindLatest between records, not from now. Each shard costs one GetShardIterator and one GetRecords
(or a few while AWS returns empty pages): they count against the shard's 5 reads a second with the running workers'.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from streamfn.connectors.kinesis.dialect import StreamLocation
from streamfn.connectors.shards import SHARD_END, AwsAccess, Lease, LeaseTable, LeaseTableError
from streamfn.connectors.shards.lease import AT_TIMESTAMP, TRIM_HORIZON, UNSTARTED
from streamfn.errors import Unreachable
from streamfn.record import Partition
from streamfn.source import GroupStatus, PartitionStatus, ShardStatus

EMPTY_PAGES = 5
"""GetRecords calls a shard's lag may take while AWS answers empty pages with more behind (old, trimmed data)."""


async def stream_status(
    stream: str, access: AwsAccess, lease_table: str, *, starting_timestamp: float | None
) -> GroupStatus:
    """The lease table's view of `stream`; Unreachable if AWS (or the endpoint) does not answer."""
    where = f"Kinesis stream {stream}" + (f" at {access.endpoint_url}" if access.endpoint_url else "")
    try:
        async with access.client("kinesis") as kinesis, access.client("dynamodb") as dynamodb:
            try:
                summary = (await kinesis.describe_stream_summary(StreamName=stream))["StreamDescriptionSummary"]
            except ClientError as error:
                if _code(error) != "ResourceNotFoundException":
                    raise
                return GroupStatus(lease_table, where, "no such stream", (), (), None)
            _, _, _, region, account, _ = summary["StreamARN"].split(":", 5)
            leases = {lease.key: lease for lease in await _leases(dynamodb, lease_table)}
            partitions = []
            shards = await _shards(kinesis, stream)
            for shard in shards:
                lease = leases.get(shard["ShardId"])
                lag = await _lag(kinesis, stream, shard["ShardId"], lease, starting_timestamp)
                children = {s["ShardId"] for s in shards if shard["ShardId"] in _parents(s)}
                partitions.append(_partition(stream, shard, lease, lag, children))
    except (ClientError, BotoCoreError, OSError, LeaseTableError) as error:
        raise Unreachable(f"{where}: {error}") from None
    members = tuple(sorted({lease.owner for lease in leases.values() if lease.owner is not None}))
    return GroupStatus(
        lease_table,
        where,
        str(summary["StreamStatus"]),
        members,
        tuple(partitions),
        StreamLocation(region, account, ""),
    )


async def _leases(dynamodb: Any, name: str) -> list[Lease]:
    """Every lease; none when the table does not exist yet (no worker ever ran the function)."""
    try:
        return await LeaseTable(dynamodb, name).scan()
    except LeaseTableError as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and _code(cause) == "ResourceNotFoundException":
            return []
        raise


async def _shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Every shard ListShards names (open and closed, within the stream's retention), in shard id order."""
    shards: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {"StreamName": stream}
    while True:
        page = await kinesis.list_shards(**arguments)
        shards += page.get("Shards", [])
        if not page.get("NextToken") or not page.get("Shards"):
            return sorted(shards, key=lambda shard: str(shard["ShardId"]))
        arguments = {"NextToken": page["NextToken"]}


def _parents(shard: dict[str, Any]) -> tuple[str, ...]:
    return tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)


def _partition(
    stream: str, shard: dict[str, Any], lease: Lease | None, lag: int, children: set[str]
) -> PartitionStatus:
    """A shard's status. Its children: the shards the listing names it the parent of, and those its lease recorded
    at its end (a child past the stream's retention is no longer listed)."""
    ranges = shard.get("SequenceNumberRange", {})
    end = ranges.get("EndingSequenceNumber")
    return PartitionStatus(
        Partition(stream, shard["ShardId"]),
        None if lease is None else lease.checkpoint,
        int(ranges.get("StartingSequenceNumber", 0)),
        None if end is None else int(end),
        lag,
        ShardStatus(
            None if lease is None else lease.owner,
            _parents(shard),
            tuple(sorted(children | (lease.children if lease is not None else frozenset()))),
        ),
    )


async def _lag(kinesis: Any, stream: str, shard: str, lease: Lease | None, timestamp: float | None) -> int:
    """Milliseconds behind the tip from the checkpoint (see the module's docstring); a shard without a lease is
    measured from its first record, as TRIM_HORIZON would read it."""
    checkpoint = lease.checkpoint if lease is not None else TRIM_HORIZON
    if checkpoint == SHARD_END:
        return 0
    arguments: dict[str, Any] = {"StreamName": stream, "ShardId": shard}
    if isinstance(checkpoint, int):
        arguments |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": str(checkpoint)}
    elif checkpoint == AT_TIMESTAMP:
        arguments |= {"ShardIteratorType": AT_TIMESTAMP, "Timestamp": datetime.fromtimestamp(timestamp or 0, UTC)}
    else:
        assert checkpoint in UNSTARTED
        arguments["ShardIteratorType"] = checkpoint
    iterator = (await kinesis.get_shard_iterator(**arguments)).get("ShardIterator")
    for _ in range(EMPTY_PAGES):
        if iterator is None:
            return 0
        page = await kinesis.get_records(ShardIterator=iterator, Limit=1)
        behind = int(page.get("MillisBehindLatest", 0))
        if page.get("Records"):
            arrival: datetime = page["Records"][0]["ApproximateArrivalTimestamp"]
            age = round((datetime.now(UTC) - arrival).total_seconds() * 1000)
            return max(behind, age, 1)
        if not behind:
            return 0
        iterator = page.get("NextShardIterator")
    return max(behind, 1)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
