"""The in-memory source: shards, positions, leases, split and merge, with no broker and no client library.

The engine's own tests run on it, and it shows what a stream source asks of the engine that Kafka does not: opaque,
non-contiguous positions (10, 20, 30... per shard), checkpoints that name the last record handled (Kinesis's
convention, not Kafka's next offset), leases another reader can take (`lost`), and shards that end (`ended`) with
children that start only once all their parents are finished.
"""

from streamfn.connectors.memory.destination import Letter, MemoryDestination
from streamfn.connectors.memory.source import MemorySource
from streamfn.connectors.memory.stream import MemoryStream

__all__ = ["Letter", "MemoryDestination", "MemorySource", "MemoryStream"]
