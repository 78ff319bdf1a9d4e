"""What the command line asks of sources and destinations beyond running functions: optional capabilities.

A connector declares one by implementing its methods; the command line checks it with `isinstance` (the protocols
are runtime-checkable) and, where a function's source or destination lacks it, says so in one line (exit code 2)
instead of reaching into the connector. `Source.status` (every source) and `Countable` (a destination's dead-letter
depth, streamfn.failures.model) are the others `streamfn status` uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from streamfn.source import Source


@dataclass(frozen=True, slots=True)
class Produced:
    """What `Producing.produce_lines` put into the stream."""

    count: int
    unkeyed: int
    """Lines produced without a key because they had no `key_field` (not JSON, or no such field)."""
    kind: str = "topic"
    """What the system calls where they went ("topic", "stream"), for the command's line."""
    created: str | None = None
    """What was created to hold them, if anything (a stream on an embedded server: "stream clicks with 4 shards")."""


@runtime_checkable
class Producing(Protocol):
    """A source that can put records into one of its streams: `streamfn produce` and `streamfn run --seed`."""

    async def produce_lines(
        self, stream: str, lines: Iterable[bytes], *, key_field: str | None, default_servers: str | None
    ) -> Produced:
        """Each non-empty line as one record's value, keyed by the JSON field `key_field` if given; return once the
        system acknowledged them all. Raises streamfn.errors.Unreachable if it does not answer."""


@runtime_checkable
class LocalSystem(Protocol):
    """A source whose system can run inside `streamfn run`, in memory, for as long as the run: started when the
    source has nowhere else to connect to (Kafka: an embedded broker, when no servers are configured anywhere), or
    only when asked for with `run --local <local_option>` (AWS: moto, so that a user with AWS credentials never
    runs against an emulator by surprise, nor against AWS by surprise)."""

    @property
    def local_name(self) -> str:
        """What the run announces it started ("embedded Kafka broker")."""

    @property
    def local_option(self) -> str:
        """The value of `run --local` that starts it ("kafka", "aws")."""

    def needs_local(self, default_servers: str | None) -> bool:
        """Whether it has nowhere to connect to without a local system (no servers of its own nor `default_servers`):
        then the run starts it unasked, and the address it yields becomes the run's default servers. Always False
        for a system started only when asked for."""

    def local(self) -> AbstractContextManager[str]:
        """Start the local system; the context yields its address and stops it on exit (a system started only when
        asked for points the run's clients at itself meanwhile, e.g. with environment variables). Raises
        streamfn.errors.ConfigError if it cannot be started."""


Origin = Literal["letter", "source", "lost", "window", "refused"]


@dataclass(frozen=True, slots=True)
class Redriven:
    """A dead letter `Redrivable.redrive` put back (or could not)."""

    topic: str
    partition: int | str
    offset: int
    """Where the record was when it failed."""
    condition: str
    origin: Origin = "letter"
    """Where its bytes came from: the letter, or the source (the letter's payload was dropped for size); lost: the
    source no longer holds it, nothing was produced; window: a tumbling window's letter, nothing to produce; refused:
    the source cannot take the record back as it was (`Refill.refusal`), nothing was produced."""
    reason: str = ""
    """Why it was refused."""


class Refill(Protocol):
    """A source's client for putting records back into it, as they were (`Refillable.refill`)."""

    async def put(self, partition: int | str, key: bytes | None, value: bytes | None) -> None:
        """Put one record back into its stream, acknowledged on return (Kinesis: PutRecord with the partition key
        `key` and the data `value`; the stream's hash of the key picks the shard, as it did the first time. DynamoDB
        Streams: the change written to the table, PutItem of its new image or DeleteItem of its keys)."""

    async def get(self, partition: int | str, offset: int) -> tuple[bytes | None, bytes | None] | None:
        """The key and value of the record at `offset` of `partition`, None if the source no longer holds it."""

    async def refusal(self, key: bytes | None, value: bytes | None) -> str | None:
        """Why `put` could not put this record back as it was, or to any effect (said for each such letter, which is
        not put back), None if it can (DynamoDB: a change without its new image, or one the table holds already)."""


@runtime_checkable
class Refillable(Protocol):
    """A source that a destination on another system redrives into (Kinesis, DynamoDB Streams: for dead letters in a
    KafkaTopic)."""

    def refill(self) -> AbstractAsyncContextManager[Refill]:
        """A client for putting records back, closed when the context ends."""


@runtime_checkable
class Redrivable(Protocol):
    """A destination that can put its dead letters back into the function's source: `streamfn redrive`."""

    @property
    def letters(self) -> str:
        """Where its dead letters are, as the command line names it (Kafka: the topic)."""

    async def redrive(
        self, source: Source, *, group: str, limit: int | None, dry_run: bool, default_servers: str | None
    ) -> list[Redriven]:
        """Put each letter's record back where it came from in `source`, once: progress is kept under `group`, so
        a second run resumes after the first. `dry_run`: list them, put nothing back, keep no progress. Raises
        streamfn.errors.ConfigError when it cannot reach `source` (another system, no servers)."""
