"""The interface between the engine's state (windows, aggregations) and the durable log that keeps it.

State lives in memory per partition; every change is also appended to a changelog under the source partition's id
(`Partition`: Kafka's topic and number, a Kinesis stream and shard name), so a worker that is restarted (even
after kill -9) or that takes a partition over in a rebalance rebuilds the state from that partition's entries, and
the children of a shard that split start from their own (none) while the parents' stay theirs. Each entry says how
far into the source partition its value reflects (`applied`), which is what makes the state exact without
transactions: a source record replayed after a crash is folded into a key again only if that key's last entry does
not already reflect it (see streamfn.state.store).

Kafka implements it with a compacted topic (streamfn.connectors.kafka.changelog); other sources bring their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from streamfn.record import Partition

APPLIED_HEADER = "streamfn.applied"
"""The changelog record header that carries an entry's `applied` offset (decimal ASCII)."""


class ChangelogEntry(NamedTuple):
    key: bytes
    value: bytes | None
    """None deletes the key (a tombstone, which compaction eventually removes)."""
    applied: int
    """Every record of the source partition before this offset is reflected in `value`."""


class Changelog(Protocol):
    """The durable log of one function's state, keyed by source partition: what is written for a partition is what
    its restore returns, and nothing of any other partition."""

    value_limit: int | None
    """The largest serialized value one entry may hold (DynamoDB: an item's 400 KB), or None when the state's own
    limits are below the log's (Kafka's 1 MiB requests). Lambda-style tumbling windows end early past it."""

    async def start(self) -> None:
        """Connect, and create the log (e.g. the compacted topic) if it does not exist."""

    async def restore(self, partition: Partition) -> list[ChangelogEntry]:
        """Every entry of `partition`'s changelog, oldest first, up to its end as of this call."""

    async def write(self, partition: Partition, entries: Sequence[ChangelogEntry]) -> None:
        """Append `entries` in order; return only once every one is durably acknowledged (raise otherwise)."""

    async def stop(self) -> None: ...
