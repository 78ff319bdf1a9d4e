"""`memory://<name>`: an on_failure destination that keeps its dead letters in a list a test can read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamfn.failures.model import FailedRecord, FailureOrigin
from streamfn.failures.record import failure_payload, failure_record
from streamfn.record import Partition, Position


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: the record that failed, why, and after how many invocations."""

    function: str
    partition: Partition
    offset: Position
    key: bytes | None
    value: bytes | None
    condition: str
    invoke_count: int
    error: str | None
    record: dict[str, Any] = field(default_factory=dict, compare=False)
    """Lambda's failure record of it with its `payload`, as an S3 destination writes it (the source's batch-info
    block: KinesisBatchInfo, DDBStreamBatchInfo...)."""


class MemoryDestination:
    def __init__(self, name: str) -> None:
        self.name = name
        self.letters: list[Letter] = []

    def __repr__(self) -> str:
        return f"memory://{self.name}"

    def check(self, source_topics: Sequence[str]) -> None:
        """Any name will do: letters are never read back as records."""

    async def open_destination(self, source_connection: Any = None) -> MemoryDestination:
        """The letters list is the destination's own: every function that names it writes to it."""
        return self

    async def deliver(self, origin: FailureOrigin, failures: Sequence[FailedRecord]) -> None:
        self.letters += (
            Letter(
                origin.function,
                f.partition,
                f.record.offset,
                f.record.key,
                f.record.value,
                str(f.condition),
                f.invoke_count,
                None if f.error is None else repr(f.error),
                _failure_record(origin, f),
            )
            for f in failures
        )

    async def close(self) -> None: ...

    async def depth(self, source_connection: Any = None) -> int:
        return len(self.letters)


def _failure_record(origin: FailureOrigin, failure: FailedRecord) -> dict[str, Any]:
    payload = failure_payload(origin, failure)
    return failure_record(origin, failure, payload) | {"payload": payload}
