"""MemorySource: a function's source over a MemoryStream (no client library, no broker)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from streamfn.connectors.memory.changelog import MemoryChangelog
from streamfn.connectors.memory.destination import MemoryDestination
from streamfn.connectors.memory.dialect import DIALECT, LOCATION
from streamfn.connectors.memory.reader import MemoryReader
from streamfn.connectors.memory.stream import MemoryStream
from streamfn.dialect import Dialect
from streamfn.errors import ConfigError
from streamfn.formats.codec import Codec, Format, make_codec
from streamfn.source import GroupStatus, PartitionStatus

SCHEME = "memory://"

CodecFormat = Format | Callable[[], Codec]
"""A format by name, or what makes a reader's codec of a format a source fixes (DynamoDB Streams' changes)."""


def _codec(format: CodecFormat, side: Literal["value", "key"]) -> Codec:
    return make_codec(format, side=side) if isinstance(format, str) else format()


class MemorySource:
    def __init__(
        self,
        stream: MemoryStream,
        *,
        value_format: CodecFormat = "json",
        key_format: CodecFormat | None = None,
        starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON",
        group_id: str | None = None,
        dialect: Dialect = DIALECT,
        connection: Any = LOCATION,
    ) -> None:
        """`dialect` and `connection`: the Lambda rules the stream's records follow and where the stream says it is
        (by default Kinesis's, streamfn.connectors.memory.dialect; DynamoDB Streams' with a TableStreamLocation and
        that source's codecs, to run its rules through the engine without AWS)."""
        self.stream = stream
        self.dialect = dialect
        self.connection = connection
        self.value_format = value_format
        self.key_format = key_format
        self.starting_position = starting_position
        self.configured_group_id = group_id
        self._destinations: dict[str, MemoryDestination] = {}

    def __repr__(self) -> str:
        return f"MemorySource({self.stream.name!r})"

    @property
    def topics(self) -> Sequence[str]:
        return [self.stream.name]

    def reader(self, *, group_id: str) -> MemoryReader:
        value = _codec(self.value_format, "value")
        key = None if self.key_format is None else _codec(self.key_format, "key")
        return MemoryReader(
            self.stream,
            group_id=group_id,
            connection=self.connection,
            value_codec=value,
            key_codec=key,
            starting_position=self.starting_position,
        )

    def changelog(self, *, group_id: str) -> MemoryChangelog:
        return MemoryChangelog(self.stream.group(group_id).changelog)

    def group_id(self, app_name: str, function_name: str) -> str:
        return self.configured_group_id or f"{app_name}-{function_name}"

    def destination(self, uri: str) -> MemoryDestination:
        """`memory://<name>`: the same MemoryDestination (and letters) for every function naming it."""
        if not uri.startswith(SCHEME) or not uri[len(SCHEME) :]:
            raise ConfigError("allowed for a memory source: memory://<name>")
        name = uri[len(SCHEME) :]
        return self._destinations.setdefault(name, MemoryDestination(name))

    async def status(self, *, group_id: str, default_servers: str | None) -> GroupStatus:
        group = self.stream.group(group_id)
        partitions = []
        for partition, shard in self.stream.shards.items():
            committed = group.checkpoints.get(partition)
            beginning = shard.positions[0] if shard.positions else 0
            end = shard.positions[-1] if shard.positions else 0
            lag = len(shard.positions) - shard.covered(0 if committed is None else committed)
            partitions.append(PartitionStatus(partition, committed, beginning, end, lag))
        members = tuple(repr(reader) for reader in group.readers)
        state = "Stable" if members else "Empty"
        return GroupStatus(group_id, repr(self.stream), state, members, tuple(partitions))
