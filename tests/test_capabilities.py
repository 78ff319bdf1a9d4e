"""The command line reaches sources and destinations through the capabilities they declare (streamfn.capabilities):
one that lacks what a command needs gets one line naming it, exit code 2, before anything is started."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, write_pipeline

from streamfn.capabilities import LocalSystem, Producing, Redrivable
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

BARE_SOURCE = """
from streamfn import App
from streamfn.connectors.kafka.dialect import KafkaDialect
from streamfn.errors import ConfigError

class Bare:
    '''A source of another system that can be read and nothing more (no produce, no local system).'''
    topics = ["events"]
    dialect = KafkaDialect()  # Lambda's rules of some source: which one does not matter here

    def reader(self, **_): raise ConfigError("Bare has no servers to read from")
    def group_id(self, app_name, function_name): return f"{app_name}-{function_name}"

app = App("capabilities")

@app.function(source=Bare())
def handle(records):
    return None
"""


def test_kafka_declares_every_capability_the_command_line_uses() -> None:
    source, topic = KafkaSource(topics=["t"]), KafkaTopic("dlq")
    assert isinstance(source, Producing) and isinstance(source, LocalSystem) and isinstance(topic, Redrivable)
    assert not isinstance(topic, Producing) and not isinstance(source, Redrivable)


def test_seeding_a_source_that_cannot_produce_is_one_line(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, BARE_SOURCE)
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"n": 1}\n')
    result = run_cli("run", str(pipeline), "--seed", f"events={lines}", servers="127.0.0.1:1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: --seed 'events={lines}': Bare cannot produce records\n"


def test_redrive_of_a_function_without_a_destination_that_can_is_one_line(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, BARE_SOURCE)
    result = run_cli("redrive", str(pipeline), "--function", "handle", servers="127.0.0.1:1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: function 'handle' has no on_failure destination: redrive needs one that can (e.g. KafkaTopic(...))\n"
    )


def test_a_run_whose_sources_need_no_local_system_starts_none(tmp_path: Path) -> None:
    """A source of a system that cannot run locally and names no servers: no embedded Kafka broker is started for
    it, whatever the source's attributes (the run fails on the source itself, when its reader is made)."""
    pipeline = write_pipeline(tmp_path, BARE_SOURCE)
    result = run_cli("run", str(pipeline), "--until-idle", "0.1")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: Bare has no servers to read from\n")
