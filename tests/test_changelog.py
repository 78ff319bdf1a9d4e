"""KafkaChangelog against the real broker: topics created like their source, entries restored exactly and in order.

What is read back is checked against the broker's own answers (admin metadata and configs), and restores run on a
new KafkaChangelog where a restarted worker would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from conftest import Out, create_topic, produce, read_topic, source

from streamfn.connectors.kafka.changelog import MAX_TOPIC_NAME, KafkaChangelog, changelog_topic
from streamfn.errors import ConfigError
from streamfn.record import Partition
from streamfn.state.changelog import APPLIED_HEADER, ChangelogEntry


@asynccontextmanager
async def started(servers: str, group: str, topics: Sequence[str]) -> AsyncIterator[KafkaChangelog]:
    changelog = KafkaChangelog(servers, group, topics)
    await changelog.start()
    try:
        yield changelog
    finally:
        await changelog.stop()


def entries(count: int, start: int = 0, tag: bytes = b"") -> list[ChangelogEntry]:
    """Keys repeat (k0..k9) as a changelog's do; every 7th entry is a tombstone."""
    return [
        ChangelogEntry(b"k%d" % (i % 10), None if i % 7 == 6 else tag + b"v%d" % i, 1000 + i)
        for i in range(start, start + count)
    ]


async def describe(servers: str, topic: str) -> tuple[int, dict[str, str]]:
    """A topic's partition count and the configs it was created with, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    configs = {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}
    return len(described["partitions"]), configs


def test_changelog_topic_names_are_legal_kafka_names() -> None:
    assert changelog_topic("orders-totals", "orders") == "orders-totals-orders-changelog"
    assert changelog_topic("app/fn:v1 +x@y", "orders") == "app_fn_v1__x_y-orders-changelog"
    long_a, long_b = changelog_topic("g" * 200, "t" * 100 + "a"), changelog_topic("g" * 200, "t" * 100 + "b")
    assert len(long_a) == len(long_b) == MAX_TOPIC_NAME
    assert long_a != long_b  # same 249-character prefix, told apart by the hash of the whole name
    assert long_a == changelog_topic("g" * 200, "t" * 100 + "a")  # stable: a restarted worker finds it again


async def test_start_creates_a_compacted_changelog_per_source_topic_with_its_partitions(
    broker: str, name: Callable[[str], str]
) -> None:
    orders, payments, group = name("orders"), name("payments"), name("g")
    await create_topic(broker, orders, 3)
    await create_topic(broker, payments, 2)
    async with started(broker, group, [orders, payments]):
        pass
    assert await describe(broker, changelog_topic(group, orders)) == (3, {"cleanup.policy": "compact"})
    assert await describe(broker, changelog_topic(group, payments)) == (2, {"cleanup.policy": "compact"})


async def test_workers_starting_together_share_one_changelog(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    first, second = KafkaChangelog(broker, group, [topic]), KafkaChangelog(broker, group, [topic])
    try:
        await asyncio.gather(first.start(), second.start())  # one creates, the other gets TopicAlreadyExists
        await first.write(Partition(topic, 1), entries(5))
        assert await second.restore(Partition(topic, 1)) == entries(5)
    finally:
        await asyncio.gather(first.stop(), second.stop())


async def test_write_then_restore_returns_the_entries_in_order(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    written = [*entries(30), ChangelogEntry(b"", b"", 0), ChangelogEntry(b"big", b"x" * 300_000, 2**40)]
    async with started(broker, group, [topic]) as changelog:
        await changelog.write(Partition(topic, 0), written)
        restored = await changelog.restore(Partition(topic, 0))
    assert restored == written
    assert [e.value for e in restored[:7]] == [b"v0", b"v1", b"v2", b"v3", b"v4", b"v5", None]  # a tombstone


async def test_restore_of_an_empty_partition_is_empty_and_quick(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    async with started(broker, group, [topic]) as changelog:
        began = time.monotonic()
        assert await changelog.restore(Partition(topic, 1)) == []
        assert time.monotonic() - began < 1.0


async def test_every_entry_of_several_batched_writes_is_restored(broker: str, name: Callable[[str], str]) -> None:
    # After batched produce Tansu's ListOffsets(latest) is the last batch's base offset + 1: a restore reading to
    # that end would stop 49 entries short.
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    async with started(broker, group, [topic]) as changelog:
        for n in range(3):
            await changelog.write(Partition(topic, 0), entries(50, start=50 * n))
        assert await changelog.restore(Partition(topic, 0)) == entries(150)
        await changelog.write(Partition(topic, 0), entries(50, start=150))  # a restore sees what came since
        assert await changelog.restore(Partition(topic, 0)) == entries(200)


async def test_a_restore_reads_only_its_own_partition(broker: str, name: Callable[[str], str]) -> None:
    orders, payments, group = name("orders"), name("payments"), name("g")
    await create_topic(broker, orders, 2)
    await create_topic(broker, payments, 2)
    async with started(broker, group, [orders, payments]) as changelog:
        await changelog.write(Partition(orders, 0), entries(40, tag=b"o0-"))
        await changelog.write(Partition(orders, 1), entries(30, tag=b"o1-"))
        await changelog.write(Partition(payments, 1), entries(20, tag=b"p1-"))
        restored = await asyncio.gather(  # concurrent restores take turns on the one consumer
            *(changelog.restore(p) for p in [Partition(orders, 1), Partition(orders, 0), Partition(payments, 1)])
        )
        assert await changelog.restore(Partition(payments, 0)) == []
    assert restored == [entries(30, tag=b"o1-"), entries(40, tag=b"o0-"), entries(20, tag=b"p1-")]


async def test_a_restarted_worker_restores_what_the_last_one_wrote(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 3)
    async with started(broker, group, [topic]) as first:
        await first.write(Partition(topic, 2), entries(120))
    changelog = source(topic, group).changelog(group_id=group)
    await changelog.start()  # the topic exists now
    try:
        assert await changelog.restore(Partition(topic, 2)) == entries(120)
    finally:
        await changelog.stop()


async def test_a_changelog_with_too_few_partitions_is_refused(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 4)
    await create_topic(broker, changelog_topic(group, topic), 2)
    changelog = KafkaChangelog(broker, group, [topic])
    with pytest.raises(ConfigError) as refused:
        await changelog.start()
    message = str(refused.value)
    assert changelog_topic(group, topic) in message and "2 partitions" in message
    assert repr(topic) in message and "4" in message
    await changelog.stop()  # safe after a failed start


async def test_a_missing_source_topic_is_refused_not_created(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    with pytest.raises(ConfigError, match="do not exist"):
        await KafkaChangelog(broker, group, [topic]).start()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        topics: list[Any] = await admin.list_topics()
    finally:
        await admin.close()
    assert topic not in topics and changelog_topic(group, topic) not in topics


async def test_ten_thousand_entries_restore_fast(broker: str, name: Callable[[str], str]) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 1)
    written = [ChangelogEntry(b"key-%d" % i, b"%0100d" % i, i + 1) for i in range(10_000)]
    async with started(broker, group, [topic]) as changelog:
        for at in range(0, len(written), 500):
            await changelog.write(Partition(topic, 0), written[at : at + 500])
        began = time.monotonic()
        assert await changelog.restore(Partition(topic, 0)) == written
        assert time.monotonic() - began < 2.0


async def test_shards_named_by_strings_restore_only_their_own_entries(broker: str, name: Callable[[str], str]) -> None:
    """A Kinesis-like source: shards named by strings, more of them than changelog partitions, the same state keys
    in each, a child shard after a split. Each restore returns its own shard's entries, in order, and nothing of
    the shards (or Kafka partitions) sharing its changelog partition; compaction could not fold them together
    either, their record keys differ."""
    stream, group = name("stream"), name("g")
    await create_topic(broker, stream, 2)
    shards = [Partition(stream, f"shardId-00000000000{n}") for n in range(5)]  # type: ignore[arg-type]
    async with started(broker, group, [stream]) as changelog:
        for n, shard in enumerate(shards):
            await changelog.write(shard, entries(12 + n, tag=b"s%d-" % n))
        await changelog.write(Partition(stream, 0), entries(9, tag=b"p0-"))
    changelog = KafkaChangelog(broker, group, [stream])  # a restarted worker
    await changelog.start()
    try:
        for n, shard in enumerate(shards):
            assert await changelog.restore(shard) == entries(12 + n, tag=b"s%d-" % n)
        assert await changelog.restore(Partition(stream, 0)) == entries(9, tag=b"p0-")
        assert await changelog.restore(Partition(stream, "shardId-000000000009")) == []  # type: ignore[arg-type]
    finally:
        await changelog.stop()
    raw = await read_topic(broker, changelog_topic(group, stream), 70 + 9)
    assert len(raw) == 79
    assert len({r.key for r in raw}) == 5 * 10 + 9  # k0..k9 per shard, k0..k8 of partition 0: none shared


async def test_entries_written_before_they_named_their_partition_still_restore(
    broker: str, name: Callable[[str], str]
) -> None:
    """A changelog written by a streamfn whose entries had no partition header (keys were the state keys alone, in
    the changelog partition of the source partition's number) restores as before, followed by what is new."""
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    async with started(broker, group, [topic]) as changelog:
        old = [ChangelogEntry(b"k%d" % n, b"old-%d" % n, 100 + n) for n in range(3)]
        await produce(
            broker,
            changelog_topic(group, topic),
            [Out(e.value, key=e.key, partition=1, headers=[(APPLIED_HEADER, b"%d" % e.applied)]) for e in old],
        )
        await changelog.write(Partition(topic, 1), entries(4, tag=b"new-"))
        assert await changelog.restore(Partition(topic, 1)) == old + entries(4, tag=b"new-")
        assert await changelog.restore(Partition(topic, 0)) == []
