"""The interface between the engine and a source system.

The engine (poller, batches, checkpoints) never imports a client library: a source connector implements these
protocols and the engine drives them. Kafka is the first implementation (streamfn.connectors.kafka).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streamfn.changelog import Changelog
from streamfn.formats import Codec
from streamfn.record import Partition, Record, SourceRecord


class AssignmentListener(Protocol):
    """Told by a reader when partitions move, before the reader fetches for the new assignment."""

    async def assigned(self, offsets: dict[Partition, int]) -> None:
        """Partitions now owned, each with the committed offset its records resume from."""

    async def revoked(self, partitions: set[Partition]) -> None:
        """Must return only once nothing more will be committed for `partitions` by this process."""


class SourceReader(Protocol):
    """A running connection to a source for one function (for Kafka: one consumer in the function's group)."""

    description: str
    servers: str
    """Where the source is (Kafka: its bootstrap servers), as events and dead letters report it."""
    value_codec: Codec
    """How values are decoded for native handlers (and validated, for formats with a schema)."""
    key_codec: Codec | None
    """How keys are decoded; None keeps them as bytes."""

    async def start(self, listener: AssignmentListener) -> None: ...

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

    def lambda_event(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]:
        """The event a Lambda-style handler receives for this batch, in the source's documented Lambda shape
        (`decoded`: the records as already decoded, for formats with a schema; see LambdaEvent)."""

    async def stop(self) -> None:
        """Leave the group and close; called after the final commit."""


class Source(Protocol):
    """A source's configuration, as the user declares it in `@app.function(source=...)`."""

    @property
    def topics(self) -> Sequence[str]:
        """The streams it reads (Kafka topics)."""

    def reader(self, *, group_id: str, default_servers: str | None) -> SourceReader: ...

    def changelog(self, *, group_id: str, default_servers: str | None) -> Changelog:
        """The durable log of a stateful function's state (windows, aggregations), partitioned like the source, so
        whoever owns a source partition can rebuild its state (see streamfn.changelog)."""

    def group_id(self, app_name: str, function_name: str) -> str:
        """The consumer group (checkpoint namespace) of a function: configured, else derived from its names."""
