"""Outputs: what handlers return reaches their sinks before the input offsets are committed.

KafkaTopic as an output (values, keys, provenance and trace headers), the Lambda-style response rule, chaining with
`Function(...)` (the other function's own retries and dead letters), a sink that never recovers, and the
configuration errors of outputs.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Out, committed, create_topic, produce, produce_values, read_topic, run_until_read, source
from pydantic import BaseModel

from streamfn import App, Backoff, Function, Output, Record, SinkRetry
from streamfn.connectors.kafka import KafkaTopic
from streamfn.connectors.kafka.embedded import free_port

FAST = Backoff(initial_seconds=0.01, max_seconds=0.05)
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Total(BaseModel):
    n: int
    doubled: int


def values(records: list[Any]) -> list[Any]:
    return [orjson.loads(r.value) for r in records]


async def test_native_outputs_reach_a_topic_with_keys_provenance_and_trace_context(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await produce(
        broker,
        topic,
        [Out(b'{"n": %d}' % i, key=b"k%d" % i, partition=0, headers=[("traceparent", TRACEPARENT)]) for i in range(30)],
    )
    app = App("outputs")

    @app.function(source=source(topic, group), batch_size=10, outputs=[KafkaTopic(out)])
    def double(records: list[Record]) -> list[Any]:
        emitted: list[Any] = []
        for r in records:
            emitted.append(Output(Total(n=r.value["n"], doubled=2 * r.value["n"]), key=r.key, headers={"h": "v"}))
            if r.value["n"] % 10 == 0:
                emitted.append(f"marker {r.value['n']}")  # a str travels as its UTF-8 bytes
        return emitted

    found = await run_until_read(app, broker, {out: 33})
    records = found[out]
    assert len(records) == 33
    totals = [r for r in records if not r.value.startswith(b"marker")]
    totals.sort(key=lambda r: orjson.loads(r.value)["n"])
    assert values(totals) == [{"n": i, "doubled": 2 * i} for i in range(30)]
    assert [r.key for r in totals] == [b"k%d" % i for i in range(30)]
    assert sorted(r.value for r in records if r.value.startswith(b"marker")) == [
        b"marker 0",
        b"marker 10",
        b"marker 20",
    ]
    headers = dict(totals[12].headers)
    assert headers["h"] == b"v"
    assert headers["streamfn.source.function"] == b"double"
    assert headers["streamfn.source.topic"] == topic.encode()
    assert headers["streamfn.source.partition"] == b"0"
    assert headers["streamfn.source.offsets"] == b"10-19"  # the invocation that emitted it
    assert headers["traceparent"] == TRACEPARENT
    assert await committed(broker, group, topic, 1) == {0: 30}


async def test_lambda_style_responses_feed_outputs_by_the_documented_rule(broker: str, name: Any) -> None:
    topic, group, out = name("t"), name("g"), name("out")
    await create_topic(broker, topic, 1)
    await create_topic(broker, out, 1)
    responses = [
        None,  # nothing
        {"batchItemFailures": []},  # a partial batch response alone: nothing
        {"outputs": [{"a": 1}, "two"], "batchItemFailures": []},  # the listed outputs
        [{"b": 3}, 4],  # each item
        {"statusCode": 200, "body": "ok"},  # any other payload: itself, once
    ]
    await produce(broker, topic, [Out(b'{"i": %d}' % i, partition=0) for i in range(len(responses))])
    app = App("lambda-outputs")

    @app.function(
        source=source(topic, group),
        batch_size=1,
        function_response_types=["ReportBatchItemFailures"],
        outputs=[KafkaTopic(out)],
    )
    def handler(event: dict[str, Any], context: Any) -> Any:
        (record,) = next(iter(event["records"].values()))
        return responses[record["offset"]]

    found = await run_until_read(app, broker, {out: 5})
    assert [r.value for r in found[out]] == [b'{"a":1}', b"two", b'{"b":3}', b"4", b'{"statusCode":200,"body":"ok"}']
    assert len(await read_topic(broker, out, 6, timeout=1)) == 5
    assert await committed(broker, group, topic, 1) == {0: 5}


async def test_function_output_chains_with_the_other_functions_retries_and_dead_letters(broker: str, name: Any) -> None:
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    await create_topic(broker, topic, 2)
    await produce_values(broker, topic, 40, partitions=2)
    attempts: dict[int, int] = {}
    app = App("chain")

    @app.function(
        maximum_retry_attempts=1,
        bisect_batch_on_function_error=True,
        backoff=FAST,
        on_failure=KafkaTopic(dlq),
        outputs=[KafkaTopic(out)],
    )
    def total(records: list[Record]) -> list[dict[str, int]]:
        for r in records:
            attempts[r.value["n"]] = attempts.get(r.value["n"], 0) + 1
            if r.value["n"] == 13:
                raise ValueError("13 is unlucky")
        return [{"n": r.value["n"], "doubled": 2 * r.value["n"]} for r in records]

    @app.function(source=source(topic, group), batch_size=20, outputs=[Function(total)])
    def parse(records: list[Record]) -> list[Output]:
        return [Output({"n": r.value["n"]}, key=r.key) for r in records]

    found = await run_until_read(app, broker, {out: 39, dlq: 1})
    assert sorted(v["n"] for v in values(found[out])) == [n for n in range(40) if n != 13]
    (letter,) = values(found[dlq])
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert letter["requestContext"]["functionArn"].endswith(":function:total")
    assert letter["errorMessage"] == "13 is unlucky"
    assert dict(found[dlq][0].headers)["streamfn.source.topic"] == topic.encode()  # the chained record's origin
    assert attempts[13] >= 2  # its own retry policy applied (first attempt + one retry per bisected part)
    assert await committed(broker, group, topic, 2) == {0: 20, 1: 20}


async def test_a_sink_that_never_recovers_sends_the_inputs_to_on_failure_then_commits(broker: str, name: Any) -> None:
    topic, group, dlq = name("t"), name("g"), name("dlq")
    await create_topic(broker, topic, 1)
    await produce_values(broker, topic, 12, partitions=1)
    unreachable = f"127.0.0.1:{free_port()}"
    app = App("sink-down")
    retry = SinkRetry(max_attempts=3, initial_seconds=0.01, max_seconds=0.05)

    @app.function(
        source=source(topic, group),
        batch_size=5,
        outputs=[KafkaTopic("nowhere", bootstrap_servers=unreachable, retry=retry)],
        on_failure=KafkaTopic(dlq),
    )
    def forward(records: list[Record]) -> list[Any]:
        return [r.value for r in records if r.value["n"] % 2 == 0]  # some batches emit, all do here

    found = await run_until_read(app, broker, {dlq: 12})
    letters = values(found[dlq])
    assert sorted(orjson.loads(_value(letter))["n"] for letter in letters) == list(range(12))
    assert {letter["requestContext"]["condition"] for letter in letters} == {"OutputDeliveryFailed"}
    assert {letter["errorType"] for letter in letters} == {"Unreachable"}  # the one connect() of every Kafka client
    assert all(letter["errorMessage"].startswith(f"cannot connect to Kafka at {unreachable} (") for letter in letters)
    assert await committed(broker, group, topic, 1) == {0: 12}


def _value(letter: dict[str, Any]) -> bytes:
    (records,) = letter["payload"]["records"].values()
    return base64.b64decode(records[0]["value"])


BAD_OUTPUTS = {
    "outputs not a list": (
        "@app.function(source=KafkaSource(topics=['t']), outputs=KafkaTopic('o'))\ndef f(records): ...",
        "function 'f': outputs=KafkaTopic(",
    ),
    "output not a sink": (
        "@app.function(source=KafkaSource(topics=['t']), outputs=['o'])\ndef f(records): ...",
        "function 'f': outputs item 'o' is invalid: expected a sink such as KafkaTopic('name')",
    ),
    "output to the source topic": (
        "@app.function(source=KafkaSource(topics=['t']), outputs=[KafkaTopic('t')])\ndef f(records): ...",
        "function 'f': KafkaTopic('t') is the function's own source topic",
    ),
    "chained function not declared": (
        "def g(records): ...\n"
        "@app.function(source=KafkaSource(topics=['t']), outputs=[Function(g)])\ndef f(records): ...",
        "function 'f': outputs item Function('g') is not a function of app 'bad'",
    ),
    "chain cycle": (
        "def f(records): ...\ndef g(records): ...\n"
        "app.function(source=KafkaSource(topics=['t']), outputs=[Function(g)])(f)\n"
        "app.function(outputs=[Function(f)])(g)",
        "function 'f': outputs form a cycle: f -> g -> f",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_bad_outputs_are_one_line_config_errors(case: str, tmp_path: Path) -> None:
    body, expected = BAD_OUTPUTS[case]
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(
        "from streamfn import App, Function\nfrom streamfn.connectors.kafka import KafkaSource, KafkaTopic\n"
        f"app = App('bad')\n{body}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "streamfn", "validate", str(pipeline)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_generator_handlers_yield_outputs_and_an_error_while_yielding_fails_the_batch(
    broker: str, name: Any
) -> None:
    topic, group, out, dlq = name("t"), name("g"), name("out"), name("dlq")
    await create_topic(broker, topic, 1)
    await create_topic(broker, out, 1)
    await produce_values(broker, topic, 10, partitions=1)
    app = App("generators")

    @app.function(
        source=source(topic, group),
        batch_size=5,
        maximum_retry_attempts=0,
        on_failure=KafkaTopic(dlq),
        outputs=[KafkaTopic(out)],
    )
    async def numbers(records: list[Record]) -> Any:
        for r in records:
            if r.value["n"] == 7:
                raise ValueError("no sevens")
            yield {"n": r.value["n"]}

    found = await run_until_read(app, broker, {out: 5, dlq: 5})
    assert values(found[out]) == [{"n": n} for n in range(5)]  # the failed batch emitted nothing
    assert sorted(dict(letter.headers)["streamfn.source.offset"] for letter in found[dlq]) == [
        b"5",
        b"6",
        b"7",
        b"8",
        b"9",
    ]
    assert {orjson.loads(letter.value)["errorMessage"] for letter in found[dlq]} == {"no sevens"}
    assert await committed(broker, group, topic, 1) == {0: 10}
