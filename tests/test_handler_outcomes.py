"""What a handler's outcome means: a BaseException it raises (sys.exit(), a custom one) is a function error like any
other (Lambda's Runtime.ExitError), so is a response that cannot be serialised (Runtime.MarshalError), and
BatchItemFailures without function_response_types=["ReportBatchItemFailures"] never counts as success."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import committed, create_topic, produce_values, read_topic, run_cli, run_worker, source, write_pipeline

from streamfn import App, Backoff, BatchItemFailures, Record
from streamfn.connectors.kafka import KafkaTopic
from streamfn.engine.handler import Invoker, RuntimeExit
from streamfn.errors import ConfigError
from streamfn.failures.model import error_type

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)


class Boom(BaseException):
    """Neither an Exception nor anything the engine raises: before, it ended the lane task silently."""


def exit_zero() -> None:
    sys.exit(0)


def boom() -> None:
    raise Boom("boom")


async def run_with_poison(
    broker: str, name: Callable[[str], str], handler: Callable[[App, KafkaTopic, Any], None]
) -> tuple[set[tuple[int, int]], list[Any]]:
    """Run a function over 2 x 10 records whose handler fails on partition 0 offset 3 (declared by `handler`),
    until the 19 others are handled and the poison record's dead letter can be read."""
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 20, partitions=2)
    handled: set[tuple[int, int]] = set()
    app = App("outcomes")
    handler(app, KafkaTopic(dlq), {"source": source(topic, group), "handled": handled})
    reader = asyncio.create_task(read_topic(broker, dlq, 1, timeout=40))
    await run_worker(app, broker, lambda: reader.done() and len(handled) == 19, settle=0.3)
    assert await committed(broker, group, topic, 2) == {0: 10, 1: 10}  # past the dead-lettered record
    return handled, reader.result()


@pytest.mark.parametrize(
    ("mode", "fail", "message"),
    [("sync", exit_zero, "exit status 0"), ("async", boom, "Boom: boom")],
    ids=["sys.exit(0)-in-a-sync-handler", "custom-BaseException-in-an-async-handler"],
)
async def test_a_base_exception_from_a_handler_is_a_function_error(
    broker: str, name: Any, mode: str, fail: Callable[[], None], message: str
) -> None:
    attempts: list[int] = []

    def declare(app: App, dlq: KafkaTopic, given: dict[str, Any]) -> None:
        handled = given["handled"]

        def body(records: list[Record]) -> None:
            record = records[0]
            if (record.partition, record.offset) == (0, 3):
                attempts.append(record.offset)
                fail()
            handled.add((record.partition, record.offset))

        async def async_handler(records: list[Record]) -> None:
            body(records)

        def sync_handler(records: list[Record]) -> None:
            body(records)

        app.function(
            source=given["source"],
            name="exits",
            batch_size=1,
            backoff=FAST,
            maximum_retry_attempts=1,
            on_failure=dlq,
        )(async_handler if mode == "async" else sync_handler)

    handled, dead = await run_with_poison(broker, name, declare)
    assert handled == {(p, o) for p in range(2) for o in range(10)} - {(0, 3)}
    assert attempts == [3, 3]  # invoked, retried once, then dead-lettered
    letter = orjson.loads(dead[0].value)
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert letter["requestContext"]["approximateInvokeCount"] == 2
    assert letter["errorType"] == "Runtime.ExitError"
    assert letter["errorMessage"].startswith("RequestId: ")
    assert letter["errorMessage"].endswith(f" Error: Runtime exited with error: {message}")
    assert dict(dead[0].headers)["streamfn.error.type"] == b"Runtime.ExitError"


async def test_a_response_that_cannot_be_serialised_is_a_marshal_error(broker: str, name: Any) -> None:
    def declare(app: App, dlq: KafkaTopic, given: dict[str, Any]) -> None:
        handled = given["handled"]

        @app.function(source=given["source"], batch_size=1, backoff=FAST, maximum_retry_attempts=0, on_failure=dlq)
        def marshal(event: dict[str, Any], context: Any) -> Any:
            (record,) = [r for records in event["records"].values() for r in records]
            if (record["partition"], record["offset"]) == (0, 3):
                return {"seen": {1, 2}}  # a set: not JSON
            handled.add((record["partition"], record["offset"]))
            return {"ok": True, "raw": b"bytes are written as they are"}

    _, dead = await run_with_poison(broker, name, declare)
    letter = orjson.loads(dead[0].value)
    assert (letter["errorType"], letter["errorMessage"]) == (
        "Runtime.MarshalError",
        "Unable to marshal response: Type is not JSON serializable: set",
    )
    assert letter["requestContext"]["approximateInvokeCount"] == 1


def report(records: list[Record]) -> Any:
    """Out of the handler's own code: the declaration cannot see it."""
    return BatchItemFailures([r for r in records if (r.partition, r.offset) == (0, 3)])


async def test_batch_item_failures_without_the_flag_fail_the_invocation(broker: str, name: Any) -> None:
    def declare(app: App, dlq: KafkaTopic, given: dict[str, Any]) -> None:
        handled = given["handled"]

        @app.function(source=given["source"], batch_size=1, backoff=FAST, maximum_retry_attempts=1, on_failure=dlq)
        def unflagged(records: list[Record]) -> Any:
            failures = report(records)
            if not failures.offsets:
                handled.add((records[0].partition, records[0].offset))
            return failures

    _, dead = await run_with_poison(broker, name, declare)
    letter = orjson.loads(dead[0].value)
    assert letter["errorType"] == "UnreportedItemFailures"
    assert letter["requestContext"]["approximateInvokeCount"] == 2


@pytest.mark.slow
def test_a_native_handler_naming_batch_item_failures_needs_the_flag(tmp_path: Path) -> None:
    app = App("declared")
    with pytest.raises(ConfigError) as refused:

        @app.function()
        def partial(records: list[Record]) -> None:
            def check(record: Record) -> None:
                if record.value is None:
                    raise BatchItemFailures([record])

            for record in records:
                check(record)

    assert str(refused.value) == (
        "function 'partial': function_response_types=[] is invalid for a handler that reports BatchItemFailures: "
        "allowed: ['ReportBatchItemFailures'] (without it a reported failure fails the whole batch)"
    )
    pipeline = write_pipeline(
        tmp_path,
        "from streamfn import App, BatchItemFailures\n"
        "from streamfn.connectors.kafka import KafkaSource\n"
        "app = App('cli')\n"
        "@app.function(source=KafkaSource(topics=['t']))\n"
        "def partial(records):\n"
        "    raise BatchItemFailures(records)\n",
    )
    result = run_cli("validate", str(pipeline))
    assert (result.returncode, result.stderr) == (
        2,
        "error: function 'partial': function_response_types=[] is invalid for a handler that reports "
        "BatchItemFailures: allowed: ['ReportBatchItemFailures'] (without it a reported failure fails the whole "
        "batch)\n",
    )


async def test_a_lambda_style_batch_item_failures_document_without_the_flag_warns_once(
    broker: str, name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = name("t"), name("g")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 20, partitions=2)
    invoked: list[int] = []
    app = App("unflagged")

    @app.function(source=source(topic, group), batch_size=1)
    def documents(event: dict[str, Any], context: Any) -> dict[str, Any]:
        (record,) = [r for records in event["records"].values() for r in records]
        invoked.append(record["offset"])
        identifier = {"partition": f"{record['topic']}-{record['partition']}", "offset": record["offset"]}
        return {"batchItemFailures": [{"itemIdentifier": identifier}]}

    with caplog.at_level(logging.WARNING, logger="streamfn.function.documents"):
        await run_worker(app, broker, lambda: len(invoked) >= 20, settle=0.3)
    assert len(invoked) == 20  # each once: the response counts as a success, as in Lambda
    assert await committed(broker, group, topic, 2) == {0: 10, 1: 10}
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamfn.function.documents"]
    assert warnings == [
        "function documents: the handler returned batchItemFailures, but function_response_types does not include "
        "'ReportBatchItemFailures': the response counts as a success (as in Lambda)"
    ]


@pytest.mark.parametrize("style", ["sync", "async"])
@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (SystemExit(3), "exit status 3"),
        (asyncio.CancelledError(), "CancelledError"),  # the handler's own, not the engine's
    ],
    ids=["KeyboardInterrupt", "SystemExit", "CancelledError"],
)
async def test_the_invoker_turns_every_base_exception_of_a_handler_into_a_function_error(
    style: str, raised: BaseException, message: str
) -> None:
    def sync_handler(records: list[Record]) -> None:
        raise raised

    async def async_handler(records: list[Record]) -> None:
        raise raised

    invoker = Invoker("raises", sync_handler if style == "sync" else async_handler, 1.0)
    try:
        with pytest.raises(RuntimeExit) as failed:
            await invoker.invoke([], "req-1")
    finally:
        invoker.close()
    assert str(failed.value) == f"RequestId: req-1 Error: Runtime exited with error: {message}"
    assert error_type(failed.value) == "Runtime.ExitError"


async def test_the_engine_cancelling_an_async_handler_is_not_a_function_error() -> None:
    started = asyncio.Event()

    async def waits(records: list[Record]) -> None:
        started.set()
        await asyncio.Event().wait()

    invoker = Invoker("waits", waits, 10.0)
    invocation = asyncio.create_task(invoker.invoke([]))
    await started.wait()
    invocation.cancel()  # a lane stopping
    with pytest.raises(asyncio.CancelledError):
        await invocation
