"""A stateful function's changelog kept by its MemoryStream, so state outlives a Worker within the process."""

from __future__ import annotations

from collections.abc import Sequence

from streamfn.record import Partition
from streamfn.state.changelog import ChangelogEntry


class MemoryChangelog:
    value_limit: int | None = None

    def __init__(self, log: dict[Partition, list[ChangelogEntry]]) -> None:
        self._log = log
        """The group's entries per source partition (owned by the stream)."""

    async def start(self) -> None: ...

    async def restore(self, partition: Partition) -> list[ChangelogEntry]:
        return list(self._log.get(partition, ()))

    async def write(self, partition: Partition, entries: Sequence[ChangelogEntry]) -> None:
        self._log.setdefault(partition, []).extend(entries)

    async def stop(self) -> None: ...
