"""The interface between the engine and a source system.

The engine (poller, batches, checkpoints) never imports a client library: a source connector implements these
protocols and the engine drives them. Kafka is the first implementation (streamfn.connectors.kafka).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamfn.dialect import Dialect
from streamfn.failures.model import Destination
from streamfn.formats.codec import Codec
from streamfn.record import Partition, SourceRecord
from streamfn.state.changelog import Changelog


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """Where a consumer group stands in one partition, as `streamfn status` reports it."""

    partition: Partition
    committed: int | None
    """The group's committed offset (the next record it will process); None if it has committed none."""
    beginning: int
    """The first offset still in the log."""
    end: int
    """The true log end: the offset the next new record will get."""

    @property
    def lag(self) -> int:
        """Records not yet processed: end - committed. With nothing committed, end - beginning: every record still in
        the log counts as lag, whatever the starting position will make of them once the function runs."""
        return self.end - (self.beginning if self.committed is None else self.committed)


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A function's consumer group (checkpoint namespace): who is in it and how far behind each partition is."""

    group_id: str
    where: str
    """Where the source is, as `status` shows it (Kafka: its bootstrap servers)."""
    state: str
    """The group's state as the source reports it (Kafka: Empty, Stable, PreparingRebalance, ...)."""
    members: tuple[str, ...]
    """Member ids of the processes in the group now (which partitions each holds is not asked: Tansu cannot say)."""
    partitions: tuple[PartitionStatus, ...]
    """Every partition of the source's streams that exist, in (topic, partition) order."""
    connection: Any = None
    """Where the source is and how it is reached (as SourceReader.connection; Kafka: its KafkaConnection): a
    destination on the same system that names no address of its own is reached the same way."""

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def max_lag(self) -> int:
        """The largest lag of one partition: Lambda's OffsetLag metric for a Kafka event source mapping."""
        return max((p.lag for p in self.partitions), default=0)


class AssignmentListener(Protocol):
    """Told by a reader when partitions move, before the reader fetches for the new assignment."""

    async def assigned(self, offsets: dict[Partition, int]) -> None:
        """Partitions now owned, each with the committed offset its records resume from."""

    async def revoked(self, partitions: set[Partition]) -> None:
        """Must return only once nothing more will be committed for `partitions` by this process."""


class SourceReader(Protocol):
    """A running connection to a source for one function (for Kafka: one consumer in the function's group)."""

    description: str
    """What it reads and where, for log lines (Kafka: "topics orders on host:9092")."""
    connection: Any
    """Where the source is and how it is reached (Kafka: a KafkaConnection with the bootstrap servers, TLS,
    SASL), opaque to the engine: it hands it to the source's dialect (events, failure records), and to the sinks
    and destinations, so that those on the same system that name no address of their own are reached the same way."""
    value_codec: Codec
    """How values are decoded for native handlers (and validated, for formats with a schema)."""
    key_codec: Codec | None
    """How keys are decoded; None keeps them as bytes."""

    async def connect(self) -> None:
        """Reach the source. Raises streamfn.errors.Unreachable if it does not answer; may then be called again (the
        poller does, within `run --connect-timeout`)."""

    async def start(self, listener: AssignmentListener) -> None:
        """Once connected: start reading, telling `listener` of the partitions it is assigned."""

    async def fetch(self, timeout: float) -> Mapping[Partition, Sequence[SourceRecord]]:
        """Records that arrived, by partition, in offset order; empty after `timeout` seconds without any."""

    def seek(self, partition: Partition, offset: int) -> None:
        """Fetch `partition` from `offset` on (an assigned partition whose outputs are stored past its commit)."""

    def pause(self, partition: Partition) -> None:
        """Stop fetching `partition` (backpressure): nothing past what was delivered is fetched until resume."""

    def resume(self, partition: Partition) -> None: ...

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Store, per partition, the offset of the next record to process (Kafka's convention)."""

    def end_offset(self, partition: Partition) -> int | None:
        """The partition's end (the offset the next new record will get) as last seen, or None if unknown."""

    async def stop(self) -> None:
        """Leave the group and close; called after the final commit, and also after a failed or no connect."""


class Source(Protocol):
    """A source's configuration, as the user declares it in `@app.function(source=...)`."""

    @property
    def topics(self) -> Sequence[str]:
        """The streams it reads (Kafka topics)."""

    @property
    def dialect(self) -> Dialect:
        """Lambda's rules for this kind of source: its event, partial responses, failure records, filters,
        defaults and lag metric (see streamfn.dialect)."""

    def reader(self, *, group_id: str) -> SourceReader: ...

    def changelog(self, *, group_id: str) -> Changelog:
        """The durable log of a stateful function's state (windows, aggregations), partitioned like the source, so
        whoever owns a source partition can rebuild its state (see streamfn.state.changelog)."""

    def group_id(self, app_name: str, function_name: str) -> str:
        """The consumer group (checkpoint namespace) of a function: configured, else derived from its names."""

    def destination(self, uri: str) -> Destination:
        """The on_failure destination a URI names, as Lambda's DestinationConfig does: `kafka://<topic>`, a topic of
        the source's cluster."""

    async def status(self, *, group_id: str, default_servers: str | None) -> GroupStatus:
        """The group's members and, per partition, its committed offset and the true end (`streamfn status`).
        Reads only: joins no group, commits nothing, creates no stream. Raises streamfn.errors.Unreachable if the
        source does not answer."""
