"""The user-facing registry: `App` and the `@app.function` decorator that declares a stream function."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any, TypeVar

from pydantic.alias_generators import to_snake

from streamfn.config import FunctionConfig
from streamfn.errors import ConfigError
from streamfn.outputs.sink import Sink
from streamfn.source import Source
from streamfn.state.aggregate import Aggregation, aggregation_of
from streamfn.style import HandlerStyle, handler_style

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class StreamFunction:
    """A declared stream function: its handler, where it reads from, how it is invoked, where its outputs go."""

    name: str
    handler: Callable[..., Any]
    source: Source | None
    """None for a function fed only by other functions' `Function(...)` outputs."""
    config: FunctionConfig
    group_id: str
    style: HandlerStyle
    outputs: tuple[Sink, ...]
    aggregation: Aggregation | None = None
    """For `@app.aggregate`: the key, window and event time; `handler` is then the fold."""

    @property
    def stateful(self) -> bool:
        """Keeps durable state per partition (windows): one lane per partition, a changelog beside the source."""
        return self.aggregation is not None or self.config.tumbling_window_in_seconds > 0


class App:
    """A set of stream functions run together by `streamfn run`."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"App name {name!r} is invalid: use 1-64 letters, digits, '_', '.' or '-'")
        self.name = name
        self.functions: dict[str, StreamFunction] = {}

    def function(
        self,
        *,
        source: Source | None = None,
        outputs: Sequence[Sink] = (),
        name: str | None = None,
        **parameters: Any,
    ) -> Callable[[F], F]:
        """Declare a stream function over `source` with event source mapping `parameters` (AWS names).

        `outputs`: sinks that receive what the handler returns, before the input offsets are committed. Without a
        `source`, the function is invoked only by other functions listing `Function(handler)` in their outputs.
        """

        def register(handler: F) -> F:
            function_name = name or handler.__name__
            try:
                if source is not None and not callable(getattr(source, "reader", None)):
                    raise ConfigError(f"source={source!r} is invalid: expected a source such as KafkaSource(...)")
                topics = source.topics if source is not None else ()
                sinks = _sinks(outputs)
                for sink in sinks:
                    sink.check(topics)
                config = _for_source(_with_destination(FunctionConfig(**parameters), source, parameters), source)
                style = handler_style(handler)
                if config.value_model is not None and style is not HandlerStyle.NATIVE:
                    raise ConfigError(
                        "value_model applies to native handlers (records); a Lambda-style handler gets the event"
                    )
                _check_windows(config, style, source)
                _check_item_failures(config, style, handler)
                _check_guarantee(config, source, sinks)
            except ConfigError as error:
                raise error.for_function(function_name) from None
            self._declare(StreamFunction(function_name, handler, source, config, "", style, sinks))
            return handler

        return register

    def aggregate(
        self,
        *,
        source: Source,
        window: Any,
        key: str | Callable[[Any], Any],
        timestamp: str | Callable[[Any], Any] = "record",
        allowed_lateness: float = 0,
        late_records: str | None = None,
        outputs: Sequence[Sink] = (),
        name: str | None = None,
        **parameters: Any,
    ) -> Callable[[F], F]:
        """Declare a windowed aggregation: `fold(accumulator, record) -> accumulator` per key and window.

        `key`: a field of the value, or a function of the record. `window`: Tumbling(seconds) or Hopping(size,
        step). `timestamp`: "record" (the record's timestamp), a field of the value or a function of the record
        (epoch ms, ISO 8601 text or a datetime). A window's result (key, window_start, window_end and the
        accumulator's fields) goes to `outputs` once the watermark (the largest event time seen minus
        `allowed_lateness` seconds) passes its end; a later record for it is late: `late_records="on_failure"`
        routes it to `on_failure` as LateRecord, "count" only counts it. The default is "on_failure" when the
        aggregation has an `on_failure` destination and "count" when it has none: a late record is late again
        every round, so held for a destination it would wedge its partition for ever. See streamfn.aggregate.
        """

        def register(fold: F) -> F:
            function_name = name or fold.__name__
            try:
                if source is None or not callable(getattr(source, "reader", None)):
                    raise ConfigError(f"source={source!r} is invalid: expected a source such as KafkaSource(...)")
                sinks = _sinks(outputs)
                for sink in sinks:
                    sink.check(source.topics)
                config = _with_destination(FunctionConfig(**_aggregate_parameters(parameters)), source, parameters)
                config = _for_source(config, source)
                default = "count" if config.on_failure is None else "on_failure"
                late = default if late_records is None else late_records
                if late == "on_failure" and config.on_failure is None:
                    raise ConfigError(
                        "late_records='on_failure' needs an on_failure destination (a late record is late again "
                        "every round: without one it would hold its partition for ever); allowed: on_failure=... "
                        "or late_records='count'"
                    )
                aggregation = aggregation_of(window, key, timestamp, allowed_lateness, late)
                if handler_style(fold) is not HandlerStyle.LAMBDA:  # two positional parameters
                    raise ConfigError("the fold must take two parameters: (accumulator, record)")
            except ConfigError as error:
                raise error.for_function(function_name) from None
            self._declare(
                StreamFunction(function_name, fold, source, config, "", HandlerStyle.AGGREGATE, sinks, aggregation)
            )
            return fold

        return register

    def _declare(self, function: StreamFunction) -> None:
        if function.name in self.functions:
            raise ConfigError("a function of this name is already declared in this app", function=function.name)
        group_id = function.source.group_id(self.name, function.name) if function.source is not None else ""
        self.functions[function.name] = dataclasses.replace(function, group_id=group_id)

    def by_handler(self, handler: Callable[..., Any]) -> StreamFunction | None:
        """The function declared with this handler, if any."""
        return next((f for f in self.functions.values() if f.handler is handler), None)


AGGREGATE_PARAMETERS = frozenset(
    {
        "batch_size",
        "maximum_batching_window_in_seconds",
        "on_failure",
        "destination_config",  # Lambda's spelling of on_failure
        "enabled",
        "filter_criteria",
        "value_model",
        "window_idle_seconds",
    }
)
"""What applies to an aggregation: its fold is not retried or bisected (a record that fails it goes to
on_failure), runs one batch per partition at a time, and its results are exactly-once in a Table by construction."""


def _aggregate_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    for given in parameters:
        if given not in AGGREGATE_PARAMETERS and to_snake(given) not in AGGREGATE_PARAMETERS:
            hint = (
                " (window results are deterministic and upserted by key and window: exactly once in a Table already)"
                if to_snake(given) == "processing_guarantee"
                else ""
            )
            raise ConfigError(
                f"parameter {given!r} does not apply to an aggregation{hint}; "
                f"allowed: {', '.join(sorted(AGGREGATE_PARAMETERS))}"
            )
    return parameters


ON_FAILURE_NAMES = ("on_failure", "OnFailure", "DestinationConfig")


def _with_destination(config: FunctionConfig, source: Source | None, parameters: dict[str, Any]) -> FunctionConfig:
    """The config with its on_failure destination checked against the source's topics; a destination named by URI
    or ARN (Lambda's `kafka://<topic>`, `arn:aws:sqs:...`) is the source's to resolve. An error names the field as
    the user spelled it in `parameters`, with the value given."""
    destination = config.on_failure
    if isinstance(destination, str):
        field = next((name for name in ON_FAILURE_NAMES if name in parameters), "on_failure")
        given = f"{field}={parameters.get(field, destination)!r}"
        if source is None:
            raise ConfigError(f"{given} is invalid: a destination URI is resolved by the source: it needs a source")
        try:
            destination = source.destination(destination)
        except ConfigError as error:
            raise ConfigError(f"{given} is invalid: {error.message}") from None
        config = config.model_copy(update={"on_failure": destination})
    if destination is not None:
        destination.check(source.topics if source is not None else ())
    return config


def _for_source(config: FunctionConfig, source: Source | None) -> FunctionConfig:
    """The config with the source's defaults and its filters compiled for its records (its dialect's rules)."""
    if source is None:
        return config.for_source({}, None)
    dialect = source.dialect
    return config.for_source(dialect.defaults, dialect.filter_fields)


def _check_windows(config: FunctionConfig, style: HandlerStyle, source: Source | None) -> None:
    if not config.tumbling_window_in_seconds:
        return
    if style is not HandlerStyle.LAMBDA:
        raise ConfigError(
            "tumbling_window_in_seconds applies to Lambda-style handlers (event, context); "
            "native handlers aggregate with @app.aggregate(window=Tumbling(seconds), ...)"
        )
    if source is None:
        raise ConfigError("tumbling_window_in_seconds needs a source: windows are kept per source partition")
    if config.parallelization_factor > 1:
        raise ConfigError(
            f"parallelization_factor={config.parallelization_factor} is invalid with tumbling_window_in_seconds: "
            "allowed: 1 (a window's state is per partition, invoked in order)"
        )


def _check_item_failures(config: FunctionConfig, style: HandlerStyle, handler: Callable[..., Any]) -> None:
    """A native handler that reports BatchItemFailures without the flag would have them count as failures of the
    whole batch at run time: refuse it here, where the code shows it (its code names BatchItemFailures)."""
    if style is HandlerStyle.NATIVE and not config.reports_item_failures and _names(handler, "BatchItemFailures"):
        raise ConfigError(
            f"function_response_types={config.function_response_types!r} is invalid for a handler that reports "
            "BatchItemFailures: allowed: ['ReportBatchItemFailures'] (without it a reported failure fails the "
            "whole batch)"
        )


def _names(function: Callable[..., Any], name: str) -> bool:
    """Whether the code of `function` (nested functions and comprehensions included) refers to `name`."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    codes = [code] if isinstance(code, CodeType) else []
    while codes:
        current = codes.pop()
        if name in current.co_names:
            return True
        codes.extend(c for c in current.co_consts if isinstance(c, CodeType))
    return False


def _check_guarantee(config: FunctionConfig, source: Source | None, sinks: Sequence[Sink]) -> None:
    if config.processing_guarantee != "exactly_once":
        return
    if source is None:
        raise ConfigError("processing_guarantee='exactly_once' needs a source: offsets are stored per partition")
    if config.parallelization_factor > 1:
        raise ConfigError(
            f"parallelization_factor={config.parallelization_factor} is invalid with processing_guarantee="
            "'exactly_once': allowed: 1 (the stored offset of a partition must only move forward)"
        )
    if config.tumbling_window_in_seconds:
        raise ConfigError(
            "processing_guarantee='exactly_once' is not available with tumbling_window_in_seconds: final "
            "invocations run at least once"
        )
    for sink in sinks:
        if not getattr(sink, "stores_offsets", False):
            raise ConfigError(
                f"processing_guarantee='exactly_once' is invalid with output {sink}: allowed outputs store the "
                "offsets they cover in the same transaction as the results (Table). KafkaTopic would need Kafka "
                "transactions, which streamfn does not offer (they cannot be verified on the test broker: see "
                "docs/behaviour.md)"
            )


def _sinks(outputs: Sequence[Sink]) -> tuple[Sink, ...]:
    if isinstance(outputs, str | bytes) or not isinstance(outputs, Sequence):
        raise ConfigError(f"outputs={outputs!r} is invalid: expected a list of sinks such as [KafkaTopic('name')]")
    for sink in outputs:
        if not callable(getattr(sink, "open", None)) or not callable(getattr(sink, "check", None)):
            raise ConfigError(
                f"outputs item {sink!r} is invalid: expected a sink such as KafkaTopic('name'), "
                "Table('sqlite:///x.db', 'name', key='id') or Function(handler)"
            )
    return tuple(outputs)
