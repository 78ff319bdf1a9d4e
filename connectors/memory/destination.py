"""`memory://<name>`: an on_failure destination that keeps its dead letters in a list a test can read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamfn.failures.model import FailedRecord, FailureOrigin
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


class MemoryDestination:
    def __init__(self, name: str) -> None:
        self.name = name
        self.letters: list[Letter] = []

    def __repr__(self) -> str:
        return f"memory://{self.name}"

    def check(self, source_topics: Sequence[str]) -> None:
        """Any name will do: letters are never read back as records."""

    async def start(self, default_servers: str, default_connection: Any = None) -> None: ...

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
            )
            for f in failures
        )

    async def stop(self) -> None: ...

    async def depth(self, default_servers: str | None, default_connection: Any = None) -> int:
        return len(self.letters)
