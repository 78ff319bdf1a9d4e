"""A source's dialect (streamfn.dialect): the engine takes Lambda's per-source rules from the function's source.

Kafka's dialect gives Kafka's rules (the other tests check them end to end); a stream-shaped source declared here
gives others (Kinesis-like: a `data` payload, sequence numbers as item identifiers, a 0 s batching window), and the
engine follows them without knowing which source it is. No broker is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from streamfn import App
from streamfn.config import FunctionConfig
from streamfn.connectors.kafka import KafkaSource
from streamfn.connectors.kafka.dialect import KafkaDialect
from streamfn.errors import ConfigError
from streamfn.failures.model import FailedRecord, InvalidResponse, first_failed_index
from streamfn.filters.criteria import RecordFields
from streamfn.observability.metrics import Instruments, LagMetric
from streamfn.record import Partition, Record, SourceRecord

SEQUENCES = (
    49590338271490256608559692538361571095921575989136588898,
    49590338271490256608559692540925702759324208523137515618,
)
"""Kinesis sequence numbers (as Python ints, as a stream source gives positions)."""


def _sequence_number(item: Any, partition: Partition) -> Any:
    identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
    if not isinstance(identifier, str) or not identifier.isdigit():
        raise InvalidResponse(f"itemIdentifier {identifier!r} is not a sequence number")
    return int(identifier)


class StreamDialect:
    """A stream's rules, as a Kinesis source's dialect would give them."""

    defaults = {"maximum_batching_window_in_seconds": 0}
    filter_fields = RecordFields(
        "a stream record",
        {"partitionKey": lambda r: r.key, "sequenceNumber": lambda r: str(r.offset), "data": lambda r: r.value},
        payloads=frozenset({"data"}),
        value="data",
    )
    lag_metric = LagMetric("IteratorAge", "ms", "Age of the last record read, per shard.", "Lambda's stream metrics")

    @property
    def failed_item(self) -> Any:
        return _sequence_number

    def lambda_event(self, connection: Any, value_codec: Any, key_codec: Any) -> Any:
        def event(partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()) -> Any:
            return {"Records": [{"kinesis": {"sequenceNumber": str(r.offset)}} for r in records]}

        return event

    def batch_info(self, connection: Any) -> Any:
        def info(failure: FailedRecord, payload_size: int) -> tuple[str, dict[str, Any]]:
            return "KinesisBatchInfo", {"shardId": str(failure.partition.partition)}

        return info


class StreamSource:
    """Declared like a source; never run here (no reader)."""

    topics = ("clicks",)
    dialect = StreamDialect()

    def reader(self, *, group_id: str) -> Any:
        raise NotImplementedError

    def group_id(self, app_name: str, function_name: str) -> str:
        return f"{app_name}-{function_name}"


def declared(source: Any, **parameters: Any) -> FunctionConfig:
    app = App("dialects")

    @app.function(source=source, **parameters)
    def handle(records: list[Record]) -> None: ...

    return app.functions["handle"].config


def record(offset: int, value: Any) -> ConsumerRecord[bytes, bytes]:
    data = orjson.dumps(value)
    return ConsumerRecord("clicks", 0, offset, 0, 0, b"user-1", data, None, 6, len(data), [])


def test_the_batching_window_defaults_to_the_sources_and_a_set_one_is_kept() -> None:
    kafka = KafkaSource(topics=["t"])
    assert declared(kafka).maximum_batching_window_in_seconds == 0.5  # Lambda's default for Kafka
    assert declared(StreamSource()).maximum_batching_window_in_seconds == 0  # and for streams
    assert declared(kafka, maximum_batching_window_in_seconds=0).maximum_batching_window_in_seconds == 0
    assert declared(StreamSource(), MaximumBatchingWindowInSeconds=2).maximum_batching_window_in_seconds == 2
    with pytest.raises(ConfigError) as raised:  # AWS's range, whatever the source
        declared(StreamSource(), maximum_batching_window_in_seconds=301)
    assert "allowed: >= 0 and <= 300" in str(raised.value)


def test_filter_patterns_see_the_sources_fields() -> None:
    config = declared(StreamSource(), filter_criteria={"Filters": [{"Pattern": '{"data": {"kind": ["buy"]}}'}]})
    criteria = config.filter_criteria
    assert [criteria.matches(record(1, {"kind": kind})) for kind in ("buy", "view")] == [True, False]
    assert criteria.matches(record(1, None), decoded={"kind": "buy"})  # a value its format decoded stands for data
    with pytest.raises(ConfigError) as raised:
        declared(StreamSource(), filter_criteria={"Filters": [{"Pattern": '{"value": {"kind": ["buy"]}}'}]})
    assert str(raised.value) == (
        "function 'handle': Invalid filter pattern definition. Filters[0].Pattern: a stream record has no field "
        "'value'; its fields are partitionKey, sequenceNumber, data"
    )


def test_filter_criteria_need_a_source() -> None:
    with pytest.raises(ConfigError) as raised:
        declared(None, filter_criteria={"Filters": [{"Pattern": '{"value": {"kind": ["buy"]}}'}]})
    assert str(raised.value) == (
        "function 'handle': filter_criteria applies to the records of a source: the function has none"
    )


def test_a_partial_response_names_records_as_the_source_does() -> None:
    partition = Partition("clicks", "shardId-000000000001")
    records = [record(sequence, {}) for sequence in SEQUENCES]
    stream = StreamSource.dialect.failed_item
    response = {"batchItemFailures": [{"itemIdentifier": str(SEQUENCES[1])}]}
    assert first_failed_index(response, partition, records, stream) == 1
    kafka = KafkaDialect().failed_item  # Kafka's identifier names a partition and an offset: not a stream's
    with pytest.raises(InvalidResponse):
        first_failed_index(response, partition, records, kafka)
    unknown = {"batchItemFailures": [{"itemIdentifier": str(SEQUENCES[0] + 1)}]}
    with pytest.raises(InvalidResponse):
        first_failed_index(unknown, partition, records, stream)


class Polled:
    """A poller as the gauges read it: a function of a source whose lag is named by `lag_metric`."""

    def __init__(self, function: str, lag_metric: LagMetric, lags: dict[Partition, int]) -> None:
        self.function = SimpleNamespace(name=function)
        self.lag_metric = lag_metric
        self.workers: dict[Partition, Any] = {}
        self._lags = lags

    def lag(self) -> dict[Partition, int]:
        return self._lags


def test_the_lag_metric_is_named_as_the_source_names_it() -> None:
    reader = InMemoryMetricReader()
    instruments = Instruments(MeterProvider(metric_readers=[reader]))
    kafka = Polled("orders", KafkaDialect.lag_metric, {Partition("orders", 0): 7, Partition("orders", 1): 2})
    stream = Polled("clicks", StreamDialect.lag_metric, {Partition("clicks", "shardId-000000000001"): 1500})
    instruments.observe({}, [kafka, stream])
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        metric.name: (metric.unit, {tuple(p.attributes.values()): p.value for p in metric.data.data_points})
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if "lag" in metric.name.lower() or "age" in metric.name.lower()
    }
    assert found == {  # OpenTelemetry's SDK exports instrument names lowercased
        "offsetlag": ("{event}", {("orders", "orders", 0): 7, ("orders", "orders", 1): 2}),
        "maxoffsetlag": ("{event}", {("orders",): 7}),
        "sumoffsetlag": ("{event}", {("orders",): 9}),
        "iteratorage": ("ms", {("clicks", "clicks", "shardId-000000000001"): 1500}),
        "maxiteratorage": ("ms", {("clicks",): 1500}),
        "sumiteratorage": ("ms", {("clicks",): 1500}),
    }
