"""Lambda's self-managed Kafka event, built from fetched records.

Shape (AWS docs, "Using Lambda with self-managed Apache Kafka"): records keyed "<topic>-<partition>", key and
value base64, timestamp in epoch ms, headers as single-key objects whose value is the list of byte values, signed
as Java's bytes are (-128..127: AWS sends -61 for 0xC3; Powertools' KafkaEvent and AWS's .NET KafkaEvent read
them so).
A null key is absent, as in Lambda; a null value (tombstone) is absent too (AWS does not document it).

With a schema registry (Lambda's SchemaRegistryConfig), a key or value in the registry's wire format carries
`keySchemaMetadata` / `valueSchemaMetadata` (`{"dataFormat": "AVRO", "schemaId": "<id>"}`) and, per
`event_record_format`, is delivered decoded (JSON: the base64 of its JSON text) or as its original bytes without
the registry's header (SOURCE). A payload that cannot be decoded keeps its original bytes and no metadata, so a
dead letter of it still carries what was read.
"""

from __future__ import annotations

from array import array
from base64 import b64encode
from binascii import b2a_base64
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel

from streamfn.formats.codec import Codec, is_plain
from streamfn.record import TIMESTAMP_TYPES, Partition, Record, SourceRecord

EVENT_SOURCE = "SelfManagedKafka"
_UNDECODED = object()


def lambda_records(records: Sequence[SourceRecord]) -> list[dict[str, Any]]:
    """Lambda's item of each record (`lambda_record`'s), built in one comprehension: this is most of what a
    Lambda-style invocation costs per record, so a record with a value (with or without a key, the usual ones) is
    one dict display, without a call per record; others (tombstones) take `lambda_record`."""
    kinds, b64 = TIMESTAMP_TYPES, b2a_base64
    return [
        {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "timestampType": kinds[r.timestamp_type],
            "value": b64(value, newline=False).decode("ascii"),
            "headers": _headers(headers) if (headers := r.headers) else [],
        }
        if (key := r.key) is None and (value := r.value) is not None
        else {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "timestampType": kinds[r.timestamp_type],
            "key": b64(key, newline=False).decode("ascii"),
            "value": b64(value, newline=False).decode("ascii"),
            "headers": _headers(headers) if (headers := r.headers) else [],
        }
        if key is not None and (value := r.value) is not None
        else lambda_record(r)
        for r in records
    ]


def lambda_record(record: SourceRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES[record.timestamp_type],
    }
    if record.key is not None:
        item["key"] = b64encode(record.key).decode("ascii")
    if record.value is not None:
        item["value"] = b64encode(record.value).decode("ascii")
    item["headers"] = _headers(record.headers)
    return item


def _headers(headers: Sequence[tuple[str, bytes | None]]) -> list[dict[str, list[int]]]:
    return [{name: signed_bytes(value)} for name, value in headers]


def signed_bytes(value: bytes | None) -> list[int]:
    """A header value as the Java byte array Lambda serializes: ASCII as it is, other bytes read as signed (in C,
    through an array of signed chars)."""
    if not value:
        return []
    return list(value) if value.isascii() else array("b", value).tolist()


class KafkaEvent:
    """Builds the event of one source's batches (callable as `event(partition, records)`)."""

    def __init__(
        self,
        servers: str,
        value_codec: Codec | None = None,
        key_codec: Codec | None = None,
        record_format: str = "JSON",
    ) -> None:
        self._servers = servers
        self._sides: list[tuple[str, Codec]] = [
            (name, codec)
            for name, codec in (("value", value_codec), ("key", key_codec))
            if codec is not None and not is_plain(codec)
        ]
        self._json = record_format == "JSON"

    def __call__(
        self, partition: Partition, records: Sequence[SourceRecord], decoded: Sequence[Record] = ()
    ) -> dict[str, Any]:
        """`decoded`: the records as the engine already decoded them (validating them), reused when present."""
        items = lambda_records(records)
        if self._sides:
            by_offset = {d.offset: d for d in decoded}
            for name, codec in self._sides:
                for record, item in zip(records, items, strict=True):
                    done = by_offset.get(record.offset)
                    value = getattr(done, name) if done is not None else _UNDECODED
                    self._registry_side(item, name, getattr(record, name), codec, value)
        return {"eventSource": EVENT_SOURCE, "bootstrapServers": self._servers, "records": {str(partition): items}}

    def _registry_side(self, item: dict[str, Any], name: str, data: bytes | None, codec: Codec, value: Any) -> None:
        metadata = codec.schema_metadata(data)
        if data is None or metadata is None:
            return  # not in a registry's wire format: the original bytes, as without a registry
        delivered: bytes | None
        try:
            if self._json:
                delivered = orjson.dumps(codec.decode(data) if value is _UNDECODED else value, default=_plain)
            else:
                delivered = codec.payload(data)
        except Exception:
            return  # undecodable: it keeps its original bytes (it is routed as a DeserializationError)
        if delivered is not None:
            item[name] = b64encode(delivered).decode("ascii")
        item[f"{name}SchemaMetadata"] = metadata


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return b64encode(value).decode("ascii")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
