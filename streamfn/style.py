"""Handler styles: the calling conventions a function's handler can have, told apart by its signature.

Declaring a function (streamfn.app) decides its style once; the engine invokes it in that style, and outputs and
Lambda-style windows read their results by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any

from streamfn.errors import ConfigError


class HandlerStyle(Enum):
    LAMBDA = "lambda"
    """handler(event, context): the event is Lambda's JSON for the source."""
    NATIVE = "native"
    """handler(records): a list of decoded Record objects."""
    AGGREGATE = "aggregate"
    """fold(accumulator, record) of `@app.aggregate`: called per record, in the event loop."""


def handler_style(function: Callable[..., Any]) -> HandlerStyle:
    positional = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) == 2:
        return HandlerStyle.LAMBDA
    if len(positional) == 1:
        return HandlerStyle.NATIVE
    raise ConfigError(
        f"handler takes {len(positional)} required positional parameters; allowed: 2 (event, context) for a "
        "Lambda-style handler or 1 (records) for a native handler"
    )
