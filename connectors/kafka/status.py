"""A consumer group's status for `streamfn status`: its members and, per partition, committed offset and true end.

Read with an admin client and a consumer in no group, so asking never joins the group or moves a partition.
Committed offsets come from OffsetFetch naming every partition (aiokafka's request for all of a group's offsets
fails on Tansu), the ends from offsets.py (not ListOffsets(latest)), the members from DescribeGroups (member ids
only: Tansu returns no assignments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

from streamfn.connectors.kafka.connect import connect
from streamfn.connectors.kafka.connection import KafkaConnection, client_options
from streamfn.connectors.kafka.offsets import offset_ranges, unreachable
from streamfn.record import Partition
from streamfn.source import GroupStatus, PartitionStatus

NO_OFFSET = -1
"""OffsetFetch's answer for a partition the group has committed nothing for."""


async def group_status(
    servers: str, group_id: str, topics: Sequence[str], connection: KafkaConnection | None = None
) -> GroupStatus:
    with unreachable(f"consumer group {group_id!r}", servers):
        ranges = await offset_ranges(servers, topics, connection)
        options = await client_options(servers, connection)
        admin = AIOKafkaAdminClient(**options, client_id="streamfn-status")
        try:
            await connect(admin, servers, options)
            responses = await admin.describe_consumer_groups([group_id])
            committed = await admin.list_consumer_group_offsets(group_id, partitions=list(ranges)) if ranges else {}
        finally:
            await admin.close()
        state, members = _described(responses, group_id)
    partitions = []
    for tp, (beginning, end) in ranges.items():
        found = committed.get(tp)
        offset = None if found is None or found.offset == NO_OFFSET else found.offset
        lag = end - (beginning if offset is None else offset)  # nothing committed: every record in the log is lag
        partitions.append(PartitionStatus(Partition(tp.topic, tp.partition), offset, beginning, end, lag))
    return GroupStatus(group_id, servers, state, members, tuple(partitions), connection)


def _described(responses: Sequence[Any], group_id: str) -> tuple[str, tuple[str, ...]]:
    """The group's state and member ids from DescribeGroups responses (groups: error_code, group_id, group_state,
    protocol_type, protocol_data, members; each member starts with its member_id)."""
    for response in responses:
        for error_code, group, state, _protocol_type, _protocol, members, *_ in response.groups:
            if group != group_id:
                continue
            if error_code:
                raise for_code(error_code)(f"DescribeGroups {group_id!r}")
            return str(state), tuple(str(member[0]) for member in members)
    return "Dead", ()
