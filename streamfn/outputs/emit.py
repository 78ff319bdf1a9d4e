"""What an invocation emits: a handler's response turned into outputs, with provenance and trace context.

Native handlers return their outputs: an iterable of items (dict, list, str, bytes, pydantic model, or `Output`
with a key and headers), or one such item, or None. Lambda-style handlers return Lambda's response payload; the
rule (streamfn's choice; Lambda has no outputs for event source mappings) is: `{"outputs": [...]}` emits those
items (beside a `batchItemFailures` list if any), a list emits its items, a partial batch response alone or None
emits nothing, and any other payload is emitted as one output, as Lambda's on-success destination receives the
response payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from streamfn.failures.model import BatchItemFailures
from streamfn.observability.tracing import TRACE_HEADERS
from streamfn.outputs.sink import SOURCE_HEADER_PREFIX, Emitted, Output, Provenance, encode
from streamfn.record import Partition, Position, SourceRecord
from streamfn.style import HandlerStyle

_SINGLE = (str, bytes, bytearray, Mapping, BaseModel, Output)


def items(response: Any, style: HandlerStyle) -> list[Any]:
    """The output items of a handler's response, per the rule above."""
    if response is None or isinstance(response, BatchItemFailures):
        return []
    if style is HandlerStyle.LAMBDA and isinstance(response, dict):
        if "outputs" in response:
            listed = response["outputs"]
            return list(listed) if isinstance(listed, list | tuple) else [listed]
        return [] if set(response) <= {"batchItemFailures"} else [response]
    if isinstance(response, _SINGLE) or not isinstance(response, Iterable):
        return [response]
    return list(response)


def emitted_at(
    function: str,
    partition: Partition,
    first_offset: Position,
    last_offset: Position,
    trace: tuple[tuple[str, bytes], ...],
    items: list[Any],
    step: str = "",
    covers: Position | None = None,
) -> list[Emitted]:
    """Items emitted on behalf of records `first_offset`..`last_offset` of `partition` (a window's results name
    the offsets at which it closed; `step` tells a window's final invocation apart), as sinks receive them;
    `covers`: the source's checkpoint value covering `last_offset` (see Provenance.covers)."""
    source = Provenance(function, partition.topic, partition.partition, first_offset, last_offset, step, covers)
    common = (
        (f"{SOURCE_HEADER_PREFIX}function", function.encode()),
        (f"{SOURCE_HEADER_PREFIX}topic", partition.topic.encode()),
        (f"{SOURCE_HEADER_PREFIX}partition", str(partition.partition).encode()),
        (f"{SOURCE_HEADER_PREFIX}offsets", f"{first_offset}-{last_offset}".encode()),
        *trace,
    )
    return [_emitted(item, common, source, index) for index, item in enumerate(items)]


def _emitted(item: Any, common: tuple[tuple[str, bytes], ...], source: Provenance, index: int) -> Emitted:
    if not isinstance(item, Output):
        return Emitted(item, None, common, source, index)
    headers = item.headers.items() if isinstance(item.headers, Mapping) else item.headers or ()
    own = tuple((name, encode(value)) for name, value in headers)
    key = None if item.key is None else encode(item.key)
    return Emitted(item.value, key, own + common, source, index)


def trace_context(records: Sequence[SourceRecord]) -> tuple[tuple[str, bytes], ...]:
    """The W3C trace context of the first input record that carries one, so a chain of functions stays one trace
    (what outputs carry when tracing is off; with it on, they name the invocation's span instead)."""
    for record in records:
        if record.headers:
            found = tuple((name, value) for name, value in record.headers if name in TRACE_HEADERS)
            if found:
                return found
    return ()
