"""What shard sources (Kinesis Data Streams, DynamoDB Streams) share: a lease table in DynamoDB (KCL 2.x's
layout), the lease coordinator that holds a fair share of the shards for one worker, and the shard lineage rules
(parents before children).

A reader builds on it like this: open the table (`LeaseTable.open(name, access)`), start one `LeaseCoordinator`
with a unique worker id, `sync()` it with the shard listing now and then, read the shards it announces on
`events` (`Acquired(shard, checkpoint)`) from their checkpoint, `checkpoint()` as records are handled, `end()` a
drained shard with its children, stop a shard at once on `Lost(shard)`, and `stop()` (which releases) at the end.
"""

from streamfn.connectors.shards.aws import AwsAccess
from streamfn.connectors.shards.coordinator import Acquired, LeaseCoordinator, LeaseEvent, Lost, default_worker_id
from streamfn.connectors.shards.lease import (
    AT_TIMESTAMP,
    LATEST,
    SHARD_END,
    TRIM_HORIZON,
    Checkpoint,
    Lease,
    Shard,
)
from streamfn.connectors.shards.table import LeaseError, LeaseLost, LeaseTable, LeaseTableError, default_table_name

__all__ = [
    "AT_TIMESTAMP",
    "LATEST",
    "SHARD_END",
    "TRIM_HORIZON",
    "Acquired",
    "AwsAccess",
    "Checkpoint",
    "Lease",
    "LeaseCoordinator",
    "LeaseError",
    "LeaseEvent",
    "LeaseLost",
    "LeaseTable",
    "LeaseTableError",
    "Lost",
    "Shard",
    "default_table_name",
    "default_worker_id",
]
