"""The user-facing registry: `App` and the `@app.function` decorator that declares a stream function."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from streamfn.config import FunctionConfig
from streamfn.errors import ConfigError
from streamfn.handler import HandlerStyle, handler_style
from streamfn.source import Source

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Function:
    """A declared stream function: its handler, where it reads from and how it is invoked."""

    name: str
    handler: Callable[..., Any]
    source: Source
    config: FunctionConfig
    group_id: str
    style: HandlerStyle


class App:
    """A set of stream functions run together by `streamfn run`."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"App name {name!r} is invalid: use 1-64 letters, digits, '_', '.' or '-'")
        self.name = name
        self.functions: dict[str, Function] = {}

    def function(self, *, source: Source, name: str | None = None, **parameters: Any) -> Callable[[F], F]:
        """Declare a stream function over `source` with event source mapping `parameters` (AWS names)."""

        def register(handler: F) -> F:
            function_name = name or handler.__name__
            try:
                if function_name in self.functions:
                    raise ConfigError("a function of this name is already declared in this app")
                if not callable(getattr(source, "reader", None)):
                    raise ConfigError(f"source={source!r} is invalid: expected a source such as KafkaSource(...)")
                config = FunctionConfig(**parameters)
                if config.on_failure is not None:
                    config.on_failure.check(source.topics)
                style = handler_style(handler)
            except ConfigError as error:
                raise error.for_function(function_name) from None
            group_id = source.group_id(self.name, function_name)
            self.functions[function_name] = Function(function_name, handler, source, config, group_id, style)
            return handler

        return register
