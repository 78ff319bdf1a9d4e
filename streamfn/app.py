"""The user-facing registry: `App` and the `@app.function` decorator that declares a stream function."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from streamfn.config import FunctionConfig
from streamfn.errors import ConfigError
from streamfn.handler import HandlerStyle, handler_style
from streamfn.sink import Sink
from streamfn.source import Source

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
                if function_name in self.functions:
                    raise ConfigError("a function of this name is already declared in this app")
                if source is not None and not callable(getattr(source, "reader", None)):
                    raise ConfigError(f"source={source!r} is invalid: expected a source such as KafkaSource(...)")
                topics = source.topics if source is not None else ()
                sinks = _sinks(outputs)
                for sink in sinks:
                    sink.check(topics)
                config = FunctionConfig(**parameters)
                if config.on_failure is not None:
                    config.on_failure.check(topics)
                style = handler_style(handler)
                if config.value_model is not None and style is not HandlerStyle.NATIVE:
                    raise ConfigError(
                        "value_model applies to native handlers (records); a Lambda-style handler gets the event"
                    )
            except ConfigError as error:
                raise error.for_function(function_name) from None
            group_id = source.group_id(self.name, function_name) if source is not None else ""
            self.functions[function_name] = StreamFunction(
                function_name, handler, source, config, group_id, style, sinks
            )
            return handler

        return register

    def by_handler(self, handler: Callable[..., Any]) -> StreamFunction | None:
        """The function declared with this handler, if any."""
        return next((f for f in self.functions.values() if f.handler is handler), None)


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
