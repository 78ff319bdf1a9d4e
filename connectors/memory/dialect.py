"""The memory source's dialect: Kinesis's (streamfn.connectors.kinesis.dialect), so that the engine's tests on the
memory source exercise a stream source's rules (Lambda's Kinesis event, sequence numbers as item identifiers,
`KinesisBatchInfo`, filters on `data`, a 0 s batching window) through the very code the Kinesis source uses.

Only the lag differs: the memory source counts the records in the shard past the checkpoint.
"""

from __future__ import annotations

from typing import Final

from streamfn.connectors.kinesis.dialect import KinesisDialect, StreamLocation
from streamfn.observability.metrics import LagMetric

RECORD_LAG: Final = LagMetric(
    "RecordLag", "{event}", "Records in the shard past the checkpoint.", "the memory source's lag"
)

DIALECT: Final = KinesisDialect(lag_metric=RECORD_LAG)

LOCATION: Final = StreamLocation(
    region="us-east-1", account="000000000000", identity_arn="arn:aws:iam::000000000000:role/streamfn-memory"
)
"""Where memory streams say they are, in their events and failure records (the memory reader's connection)."""
