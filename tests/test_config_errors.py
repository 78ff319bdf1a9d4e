"""Bad configuration: one line naming function, field, value and what is allowed; exit code 2; no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_pipeline

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

HEADER = """
from streamfn import App
from streamfn.connectors.kafka import KafkaSource
app = App("errors")
"""

CASES = {
    "batch size out of range": (
        """
@app.function(source=KafkaSource(topics=["t"]), batch_size=20000)
def enrich(event, context): ...
""",
        ["function 'enrich'", "batch_size=20000", "allowed: >= 1 and <= 10000"],
    ),
    "window out of range (PascalCase alias)": (
        """
@app.function(source=KafkaSource(topics=["t"]), MaximumBatchingWindowInSeconds=301)
def enrich(event, context): ...
""",
        ["function 'enrich'", "MaximumBatchingWindowInSeconds=301", "allowed: >= 0 and <= 300"],
    ),
    "typo in a parameter name": (
        """
@app.function(source=KafkaSource(topics=["t"]), batchsize=10)
def enrich(event, context): ...
""",
        ["function 'enrich'", "unknown parameter 'batchsize'", "did you mean 'batch_size'?"],
    ),
    "bad starting position in the source": (
        """
@app.function(source=KafkaSource(topics=["t"], starting_position="EARLIEST"))
def enrich(event, context): ...
""",
        [
            "function 'enrich'",
            "KafkaSource",
            "starting_position='EARLIEST'",
            "'TRIM_HORIZON', 'LATEST' or 'AT_TIMESTAMP'",
        ],
    ),
    "AT_TIMESTAMP without a timestamp": (
        """
@app.function(source=KafkaSource(topics=["t"], StartingPosition="AT_TIMESTAMP"))
def enrich(event, context): ...
""",
        ["function 'enrich'", "starting_position_timestamp", "required"],
    ),
    "no topics": (
        """
@app.function(source=KafkaSource(topics=[]))
def enrich(event, context): ...
""",
        ["function 'enrich'", "topics=[]", "at least 1 item"],
    ),
    "handler with three parameters": (
        """
@app.function(source=KafkaSource(topics=["t"]))
def enrich(a, b, c): ...
""",
        ["function 'enrich'", "3 required positional parameters", "(event, context)", "(records)"],
    ),
    "negative timeout": (
        """
@app.function(source=KafkaSource(topics=["t"]), timeout=-1)
def enrich(records): ...
""",
        ["function 'enrich'", "timeout=-1", "allowed: > 0 and <= 900"],
    ),
    "dead letters to the source topic": (
        """
from streamfn.connectors.kafka import KafkaTopic
@app.function(source=KafkaSource(topics=["orders"]), on_failure=KafkaTopic("orders"))
def enrich(event, context): ...
""",
        ["function 'enrich'", "KafkaTopic('orders') is the function's own source topic"],
    ),
    "schema registry secrets": (
        """
@app.function(source=KafkaSource(topics=["t"], SchemaRegistryConfig={"SchemaRegistryURI": "https://r",
    "AccessConfigs": [{"Type": "BASIC_AUTH", "URI": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}]}))
def enrich(event, context): ...
""",
        ["function 'enrich'", "KafkaSource: SchemaRegistryConfig.AccessConfigs name Secrets Manager secrets"],
    ),
    "avro without a schema": (
        """
@app.function(source=KafkaSource(topics=["t"], value_format="avro"))
def enrich(records): ...
""",
        ["function 'enrich'", "value_format='avro' needs value_schema (an .avsc file) or schema_registry"],
    ),
    "missing avsc file": (
        """
@app.function(source=KafkaSource(topics=["t"], value_format="avro", value_schema="nowhere.avsc"))
def enrich(records): ...
""",
        ["function 'enrich'", "nowhere.avsc"],
    ),
    "record age below 60": (
        """
@app.function(source=KafkaSource(topics=["t"]), MaximumRecordAgeInSeconds=30)
def enrich(event, context): ...
""",
        ["function 'enrich'", "MaximumRecordAgeInSeconds=30", "-1 (no limit) or between 60 and 604800"],
    ),
    "retries out of range": (
        """
@app.function(source=KafkaSource(topics=["t"]), maximum_retry_attempts=10001)
def enrich(event, context): ...
""",
        ["function 'enrich'", "maximum_retry_attempts=10001", "allowed: >= -1 and <= 10000"],
    ),
    "retries given as a bool": (
        """
@app.function(source=KafkaSource(topics=["t"]), maximum_retry_attempts=True)
def enrich(event, context): ...
""",
        ["function 'enrich'", "maximum_retry_attempts=True", "must be a number, not a bool"],
    ),
    "batch size given as a bool (PascalCase alias)": (
        """
@app.function(source=KafkaSource(topics=["t"]), BatchSize=True)
def enrich(event, context): ...
""",
        ["function 'enrich'", "BatchSize=True", "must be a number, not a bool"],
    ),
    "destination of another scheme": (
        """
@app.function(source=KafkaSource(topics=["t"]),
              DestinationConfig={"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:dlq"}})
def enrich(event, context): ...
""",
        ["function 'enrich'", "DestinationConfig={'OnFailure': {'Destination': 'arn:aws:sqs:", "kafka://<topic>"],
    ),
    "destination config with OnSuccess": (
        """
@app.function(source=KafkaSource(topics=["t"]), DestinationConfig={"OnSuccess": {"Destination": "kafka://ok"}})
def enrich(event, context): ...
""",
        ["function 'enrich'", "DestinationConfig=", 'must be {"OnFailure": {"Destination": "kafka://<topic>"}}'],
    ),
    "kafka:// destination is the source topic": (
        """
@app.function(source=KafkaSource(topics=["orders"]), DestinationConfig={"OnFailure": {"Destination": "kafka://orders"}})
def enrich(event, context): ...
""",
        ["function 'enrich'", "KafkaTopic('orders') is the function's own source topic"],
    ),
    "unknown response type": (
        """
@app.function(source=KafkaSource(topics=["t"]), FunctionResponseTypes=["ReportItemFailures"])
def enrich(event, context): ...
""",
        ["function 'enrich'", "FunctionResponseTypes.0='ReportItemFailures'", "'ReportBatchItemFailures'"],
    ),
    "parallelization factor out of range": (
        """
@app.function(source=KafkaSource(topics=["t"]), ParallelizationFactor=11)
def enrich(event, context): ...
""",
        ["function 'enrich'", "ParallelizationFactor=11", "allowed: >= 1 and <= 10"],
    ),
    "no function declared": ("", ["declares no function"]),
    "import fails": (
        "import not_a_module_anywhere\n",
        ["cannot import", "ModuleNotFoundError", "not_a_module_anywhere"],
    ),
    "syntax error": ("def broken(:\n", ["cannot import", "SyntaxError"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_is_one_clear_line_with_exit_code_2(case: str, tmp_path: Path) -> None:
    body, expected = CASES[case]
    pipeline = write_pipeline(tmp_path, HEADER + body)
    for command in ("run", "validate"):
        result = run_cli(command, str(pipeline), servers="127.0.0.1:1")
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])


def test_missing_pipeline_file(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "nope.py"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: pipeline file '{tmp_path / 'nope.py'}' does not exist"


def test_validate_accepts_a_good_pipeline(tmp_path: Path) -> None:
    pipeline = write_pipeline(
        tmp_path,
        HEADER
        + """
@app.function(source=KafkaSource(Topics=["t"], ConsumerGroupId="g1"), BatchSize=500, MaximumBatchingWindowInSeconds=2)
def enrich(event, context): ...

@app.function(source=KafkaSource(topics=["t"]))
async def native(records): ...

@app.function(source=KafkaSource(topics=["t"]), DestinationConfig={"OnFailure": {"Destination": "kafka://dlq"}},
              Enabled=False)
def parked(event, context): ...
""",
    )
    result = run_cli("validate", str(pipeline))
    assert result.returncode == 0, result.stderr
    assert "function enrich: ok (lambda handler, group g1)" in result.stdout
    assert "function native: ok (native handler, group errors-native)" in result.stdout
    assert "function parked: ok (lambda handler, group errors-parked, Enabled=False: not run)" in result.stdout
