"""A destination is configuration: each function opens its own writer, reaching the destination from its own source.

One `KafkaTopic` declared once and named by functions whose sources are on different clusters: each function's
dead letters go to the topic on its own source's cluster (where Lambda writes a Kafka destination: the source's
cluster), through a producer of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from conftest import Out, create_topic, produce, read_topic, source

from streamfn import App, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.embedded import EmbeddedBroker
from streamfn.engine.worker import Worker


def fail(records: list[Record]) -> None:
    raise ValueError("never handled")


async def test_a_destination_shared_by_functions_on_two_clusters_gets_each_ones_letters_on_its_cluster(
    broker: str, name: Callable[[str], str]
) -> None:
    topic, dlq = name("t"), name("dlq")
    shared = KafkaTopic(dlq)  # no servers of its own: the cluster of each function's source
    with EmbeddedBroker() as other:
        clusters = {"here": broker, "there": other.address}
        app = App("two-clusters")
        for function, servers in clusters.items():
            await create_topic(servers, topic, 1)
            await produce(servers, topic, [Out(orjson.dumps({"from": function}), partition=0)])
            app.function(
                source=source(topic, name("g"), bootstrap_servers=servers),
                name=function,
                maximum_retry_attempts=0,
                maximum_batching_window_in_seconds=0,
                on_failure=shared,
            )(fail)
        worker = Worker(app)
        running = asyncio.create_task(worker.run(handle_signals=False))
        try:
            letters = {function: await read_topic(at, dlq, 1, timeout=15) for function, at in clusters.items()}
        finally:
            worker.stop()
            await running
    for function, servers in clusters.items():
        (letter,) = letters[function]
        body: dict[str, Any] = orjson.loads(letter.value)
        assert body["requestContext"]["functionArn"].endswith(f":function:{function}")
        assert body["errorMessage"] == "never handled"
        assert body["KafkaBatchInfo"]["bootstrapServers"] == servers
        assert body["payload"]["bootstrapServers"] == servers
