"""What the harnesses of the shard sources (Kinesis, DynamoDB Streams) share: the lease table in moto's DynamoDB
read as the scenarios' counts, another worker taking a lease, and the checkpoints a source's readers were refused.

A checkpoint is the last sequence number handled (or SHARD_END: all of the shard), turned into a count with the
sequence numbers of the records put, per partition index.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from streamfn.connectors.shards import SHARD_END
from streamfn.connectors.shards.reader import ShardReader

REGION = "us-east-1"
LEASE_DURATION_SECONDS = 1.0
"""Short, so that a lease taken by another worker is found lost within a renew period (a third of it)."""

READERS: dict[str, list[ShardReader]] = {}
"""The readers each group's sources made (the harness sources keep them), to ask what they were refused."""


def keep(group: str, reader: ShardReader) -> ShardReader:
    READERS.setdefault(group, []).append(reader)
    return reader


@dataclass
class LeaseTableStream:
    """The lease-table half of a shard source's harness stream; `dynamodb` is a boto3 client on moto."""

    dynamodb: Any
    shards: list[str]
    """Shard ids by partition index."""
    group: str
    sequences: dict[int, list[int]] = field(default_factory=dict)
    """Per partition, the sequence numbers of the records put, in order."""

    def _leases(self, group: str) -> list[dict[str, Any]]:
        try:
            return list(self.dynamodb.scan(TableName=group, ConsistentRead=True)["Items"])
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return []

    def checkpoints(self, group: str) -> dict[str, str]:
        return {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in self._leases(group)}

    async def covered(self, group: str) -> dict[int, int]:
        checkpoints = self.checkpoints(group)
        covered = {}
        for index, shard in enumerate(self.shards):
            checkpoint = checkpoints.get(shard, "")
            put = self.sequences.get(index, [])
            if checkpoint == SHARD_END:
                covered[index] = len(put)
            else:
                covered[index] = bisect_right(put, int(checkpoint) if checkpoint.isdigit() else 0)
        return covered

    def finished(self, group: str) -> set[int]:
        checkpoints = self.checkpoints(group)
        return {index for index, shard in enumerate(self.shards) if checkpoints.get(shard) == SHARD_END}

    def take(self, group: str, partition: int) -> None:
        """Another worker takes the shard's lease, as the lease table's take does (a conditional write on the
        counter, which the holder's next renew then finds changed)."""
        shard = self.shards[partition]
        [item] = [item for item in self._leases(group) if item["leaseKey"]["S"] == shard]
        self.dynamodb.update_item(
            TableName=group,
            Key={"leaseKey": {"S": shard}},
            UpdateExpression="SET leaseOwner = :owner, leaseCounter = leaseCounter + :one",
            ConditionExpression="leaseCounter = :counter",
            ExpressionAttributeValues={
                ":owner": {"S": "another-worker"},
                ":one": {"N": "1"},
                ":counter": item["leaseCounter"],
            },
        )

    def refused(self, group: str) -> list[Any]:
        return [refusal for reader in READERS.get(group, []) for refusal in reader.refused]
