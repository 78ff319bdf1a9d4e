"""The one place the command line names a system: Kafka, the default of commands that load no pipeline.

Everything else the commands do with sources and destinations goes through the capabilities they declare
(streamfn.capabilities; `Source.status`; `Countable`), whatever system they are on.
"""

from __future__ import annotations

from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.kafka.connection import SERVERS_ENV
from streamfn.source import Source

__all__ = ["SERVERS_ENV", "default_source"]


def default_source(stream: str) -> Source:
    """The source `streamfn produce STREAM` writes to, and `run --seed STREAM=FILE` when no function reads STREAM:
    a Kafka topic on --bootstrap-servers (or SERVERS_ENV)."""
    return KafkaSource(topics=[stream])
