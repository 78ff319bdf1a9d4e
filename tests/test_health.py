"""The health endpoint over a real worker: /ready across the group's assignment, /live across a stuck partition."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
from conftest import Out, committed, create_topic, produce, produce_values, source

from streamfn import App, Record
from streamfn.cli.health import Health
from streamfn.engine.worker import Worker
from streamfn.observability.endpoint import Endpoint

STUCK_AFTER = 2.0


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, orjson.loads(body) if error.headers.get("Content-Type") == "application/json" else body


async def get(port: int, path: str) -> tuple[int, Any]:
    """GET from a thread: the event loop (and the worker on it) keeps running meanwhile."""
    return await asyncio.to_thread(_get, port, path)


async def wait_status(port: int, path: str, status: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await get(port, path)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still answers {code} after {timeout} s: {body}")
        await asyncio.sleep(0.1)


async def test_ready_after_assignment_and_not_live_while_a_partition_is_stuck(broker: str, name: Any) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    handled: list[tuple[int, int]] = []
    blocked, release = asyncio.Event(), asyncio.Event()
    app = App("health")

    @app.function(source=source(topic, group), batch_size=10, maximum_batching_window_in_seconds=0, timeout=60)
    async def handler(records: list[Record]) -> None:
        for r in records:
            if r.value.get("block"):
                blocked.set()
                await release.wait()
            handled.append((r.partition, r.offset))

    worker = Worker(app)
    with Endpoint(0, Health(worker, stuck_after=STUCK_AFTER).routes(), host="127.0.0.1") as endpoint:
        assert (await get(endpoint.port, "/nope"))[0] == 404
        task = asyncio.create_task(worker.run(handle_signals=False))
        try:
            # Joining the group takes seconds on this broker: not ready until the partitions are assigned.
            code, body = await get(endpoint.port, "/ready")
            assert code == 503, body
            assert body["functions"]["handler"]["assigned"] is False
            body = await wait_status(endpoint.port, "/ready", 200, timeout=20)
            assert body["functions"]["handler"] == {
                "group": group,
                "assigned": True,
                "partitions": [f"{topic}-0", f"{topic}-1"],
            }

            # Records flowing: live.
            await produce_values(broker, topic, 100, partitions=2)
            while len(handled) < 100:
                assert (await get(endpoint.port, "/live"))[0] == 200
                await asyncio.sleep(0.05)

            # A record whose handler hangs on partition 0, with records behind it on both partitions.
            await produce(broker, topic, [Out(b'{"block": true}', partition=0)])
            await produce_values(broker, topic, 20, partitions=2, start=100)
            await asyncio.wait_for(blocked.wait(), 10)
            assert (await get(endpoint.port, "/live"))[0] == 200  # pending, but not for stuck_after yet
            started = time.monotonic()
            body = await wait_status(endpoint.port, "/live", 503, timeout=STUCK_AFTER + 5)
            assert time.monotonic() - started > STUCK_AFTER - 0.5
            assert body["live"] is False
            [stuck] = body["stuck"]  # partition 1 flows on: only partition 0 is stuck
            assert stuck["function"] == "handler"
            assert stuck["partition"] == f"{topic}-0"
            assert stuck["stuck_for_seconds"] >= STUCK_AFTER  # rounded to 0.1 s: 2.04 reads 2.0
            assert stuck["in_flight"] >= 1
            code, alias = await get(endpoint.port, "/health")  # the alias answers the same
            assert code == 503 and [s["partition"] for s in alias["stuck"]] == [f"{topic}-0"]

            # Released: live again, and everything handled and committed.
            release.set()
            await wait_status(endpoint.port, "/live", 200, timeout=5)
            deadline = time.monotonic() + 20
            while len(handled) < 121:
                assert time.monotonic() < deadline, len(handled)
                await asyncio.sleep(0.05)
        finally:
            release.set()
            worker.stop()
            await task
    assert sorted(handled) == sorted(set(handled))  # each record once
    assert await committed(broker, group, topic, 2) == {0: 61, 1: 60}
