"""KafkaSource: where a function reads from, with the AWS names of a self-managed Kafka event source mapping."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from streamfn.capabilities import Produced
from streamfn.config import check_starting_timestamp
from streamfn.connectors.kafka.access import from_source_access_configurations
from streamfn.connectors.kafka.changelog import KafkaChangelog
from streamfn.connectors.kafka.codecs import TopicFormat
from streamfn.connectors.kafka.connection import (
    SERVERS_ENV,
    KafkaConnection,
    default_connection,
    join_servers,
    servers_of,
    with_connection_servers,
)
from streamfn.connectors.kafka.dialect import KafkaDialect
from streamfn.connectors.kafka.reader import KafkaReader
from streamfn.connectors.kafka.status import group_status
from streamfn.errors import ConfigError
from streamfn.source import GroupStatus

if TYPE_CHECKING:
    from streamfn.connectors.kafka.destination import KafkaTopic

KAFKA_DESTINATION = re.compile(r"kafka://[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,248}")
"""How Lambda's DestinationConfig names a Kafka topic (its API pattern, without a leading dot)."""


class KafkaSource(TopicFormat):
    """Where a function reads from; its value and key formats are TopicFormat's."""

    owner = "KafkaSource"

    topics: list[str] = Field(min_length=1, validation_alias=AliasChoices("topics", "Topics"))
    consumer_group_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[ a-zA-Z0-9\-/*:_+=.@]*$",
        validation_alias=AliasChoices("consumer_group_id", "ConsumerGroupId"),
    )
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        "TRIM_HORIZON", validation_alias=AliasChoices("starting_position", "StartingPosition")
    )
    starting_position_timestamp: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("starting_position_timestamp", "StartingPositionTimestamp")
    )
    event_record_format: Literal["JSON", "SOURCE"] = Field(
        "JSON", validation_alias=AliasChoices("event_record_format", "EventRecordFormat")
    )
    """Lambda-style handlers with a schema registry: JSON delivers each value decoded (as base64 JSON text),
    SOURCE the original bytes without the registry's header; each record carries key/valueSchemaMetadata."""
    bootstrap_servers: str | list[str] | None = None
    connection: KafkaConnection | None = None
    """TLS and SASL settings (and possibly the servers), shared with the pipeline's other Kafka parts; else the
    STREAMFN_KAFKA_* environment variables. Lambda's SourceAccessConfigurations are accepted instead."""
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    """How long the group waits for a silent (crashed) worker before moving its partitions."""

    @model_validator(mode="after")
    def _timestamp_with_at_timestamp(self) -> KafkaSource:
        check_starting_timestamp(self.starting_position, self.starting_position_timestamp)
        return self

    @model_validator(mode="before")
    @classmethod
    def _lambda_access(cls, values: Any) -> Any:
        """Lambda's SelfManagedEventSource (the servers) and SourceAccessConfigurations (authentication and
        encryption from Secrets Manager) as the API and CloudFormation spell them; a connection's servers."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if "SelfManagedEventSource" in values:
            source = values.pop("SelfManagedEventSource")
            endpoints = source.get("Endpoints") if isinstance(source, dict) else None
            servers = endpoints.get("KAFKA_BOOTSTRAP_SERVERS") if isinstance(endpoints, dict) else None
            if not isinstance(servers, list) or not servers:
                raise ValueError("SelfManagedEventSource needs Endpoints.KAFKA_BOOTSTRAP_SERVERS, a list of host:port")
            values["bootstrap_servers"] = servers
        if "SourceAccessConfigurations" in values:
            if values.get("connection") is not None:
                raise ValueError("give connection= or SourceAccessConfigurations, not both")
            entries = values.pop("SourceAccessConfigurations")
            values["connection"] = from_source_access_configurations(entries)
        return with_connection_servers(values)

    @model_validator(mode="before")
    @classmethod
    def _lambda_schema_registry_config(cls, values: Any) -> Any:
        """Lambda's `SchemaRegistryConfig` as CloudFormation or the API spell it, translated to streamfn's fields."""
        if not isinstance(values, dict) or "SchemaRegistryConfig" not in values:
            return values
        values = dict(values)
        config = values.pop("SchemaRegistryConfig")
        if not isinstance(config, dict) or not isinstance(config.get("SchemaRegistryURI"), str):
            raise ValueError("SchemaRegistryConfig needs SchemaRegistryURI, the registry's URL")
        unknown = set(config) - {"SchemaRegistryURI", "EventRecordFormat", "SchemaValidationConfigs", "AccessConfigs"}
        if unknown:
            raise ValueError(f"SchemaRegistryConfig has unknown keys {sorted(unknown)}")
        if config.get("AccessConfigs"):
            raise ValueError(
                "SchemaRegistryConfig.AccessConfigs name Secrets Manager secrets, which streamfn cannot read: give "
                "schema_registry=SchemaRegistry(url, basic_auth=(user, password), ca_file=..., cert_file=..., "
                "key_file=...) instead"
            )
        from streamfn.formats.registry import SchemaRegistry

        values["schema_registry"] = SchemaRegistry(config["SchemaRegistryURI"])
        if "EventRecordFormat" in config:
            values["event_record_format"] = config["EventRecordFormat"]
        attributes = {
            item.get("Attribute") for item in config.get("SchemaValidationConfigs") or [{"Attribute": "VALUE"}]
        }
        if not attributes <= {"KEY", "VALUE"}:
            raise ValueError("SchemaRegistryConfig.SchemaValidationConfigs Attribute must be KEY or VALUE")
        for attribute in attributes:  # Lambda decodes (and validates) these through the registry: Avro here
            values[f"{attribute.lower()}_format"] = "avro"
        return values

    def group_id(self, app_name: str, function_name: str) -> str:
        return self.consumer_group_id or f"{app_name}-{function_name}"

    def destination(self, uri: str) -> KafkaTopic:
        """`kafka://<topic>`: as Lambda, a topic on the source's own cluster; any other URI or ARN is refused."""
        from streamfn.connectors.kafka.destination import KafkaTopic  # it imports this module

        if not KAFKA_DESTINATION.fullmatch(uri):
            raise ConfigError(
                "allowed for a Kafka source: kafka://<topic> (a topic of the source's cluster, as Lambda names a "
                "Kafka destination) or a destination object such as KafkaTopic('name') or SqsQueue(url)"
            )
        return KafkaTopic(uri.removeprefix("kafka://"))

    def servers(self, default_servers: str | None) -> str | None:
        """KafkaSource(bootstrap_servers=), else `default_servers` (a command's --bootstrap-servers), else
        STREAMFN_BOOTSTRAP_SERVERS (which `streamfn run` sets to its --bootstrap-servers or embedded broker)."""
        return join_servers(self.bootstrap_servers) or default_servers or os.environ.get(SERVERS_ENV) or None

    @property
    def dialect(self) -> KafkaDialect:
        return KafkaDialect(self.event_record_format)

    def reached(self) -> KafkaConnection:
        """Where its cluster is (`servers`) and how it is reached: its connection, else STREAMFN_KAFKA_*'s."""
        servers = self.servers(None)
        if servers is None:
            raise RuntimeError("no bootstrap servers: streamfn run starts an embedded broker in this case")
        return (self.connection or default_connection()).at(servers)

    def reader(self, *, group_id: str) -> KafkaReader:
        return KafkaReader(self, group_id=group_id, connection=self.reached())

    def changelog(self, *, group_id: str) -> KafkaChangelog:
        """The group's state changelog: compacted topics on the source's cluster, one per source topic."""
        connection = self.reached()
        return KafkaChangelog(servers_of(connection), group_id, self.topics, connection)

    async def status(self, *, group_id: str, default_servers: str | None) -> GroupStatus:
        servers = self.servers(default_servers)
        if servers is None:
            raise ConfigError(f"status needs --bootstrap-servers or {SERVERS_ENV} (the embedded broker keeps nothing)")
        return await group_status(servers, group_id, self.topics, (self.connection or default_connection()).at(servers))

    # Capabilities the command line uses (streamfn.capabilities): Producing, LocalSystem.

    async def produce_lines(
        self, stream: str, lines: Iterable[bytes], *, key_field: str | None, default_servers: str | None
    ) -> Produced:
        from streamfn.connectors.kafka.produce import produce_lines  # only the command line produces

        servers = self.servers(default_servers)
        if servers is None:
            raise ConfigError(f"produce needs --bootstrap-servers or {SERVERS_ENV}")
        return await produce_lines(
            servers,
            stream,
            lines,
            key_field=key_field,
            connection=(self.connection or default_connection()).at(servers),
        )

    local_name: ClassVar[str] = "embedded Kafka broker"
    local_option: ClassVar[str] = "kafka"

    def needs_local(self, default_servers: str | None) -> bool:
        return self.servers(default_servers) is None

    @contextmanager
    def local(self) -> Iterator[str]:
        """An embedded broker (Tansu), in memory, stopped when the context ends."""
        from streamfn.connectors.kafka.embedded import EmbeddedBroker

        with EmbeddedBroker() as broker:
            yield broker.address
