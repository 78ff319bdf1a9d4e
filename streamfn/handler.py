"""Calling a user's handler: which style it is, sync or async, bounded by the function's timeout.

Sync handlers run in a thread pool so a slow or blocking handler never stalls the event loop, which keeps
heartbeats, fetches and other partitions going.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

from streamfn.context import LambdaContext, new_request_id
from streamfn.errors import ConfigError

MAX_HANDLER_THREADS = 64
"""Sync invocations in flight at once per function; a timed-out call keeps its thread until it returns."""


class HandlerStyle(Enum):
    LAMBDA = "lambda"
    """handler(event, context): the event is Lambda's JSON for the source."""
    NATIVE = "native"
    """handler(records): a list of decoded Record objects."""
    AGGREGATE = "aggregate"
    """fold(accumulator, record) of `@app.aggregate`: called per record, in the event loop."""


class InvocationTimeout(Exception):
    """The handler did not return within the function's timeout (a function error, as in Lambda)."""


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


def _collecting(function: Callable[..., Any]) -> Callable[..., Any]:
    """A generator handler yields its outputs: collect them within the invocation (its thread, its timeout), so
    an error raised while yielding is a function error of that invocation like any other."""
    if inspect.isasyncgenfunction(function):

        async def collect_async(*args: Any) -> list[Any]:
            return [item async for item in function(*args)]

        return collect_async
    if inspect.isgeneratorfunction(function):
        return lambda *args: list(function(*args))
    return function


class Invoker:
    """Invokes one function's handler with a payload, enforcing its timeout."""

    def __init__(self, name: str, function: Callable[..., Any], timeout: float) -> None:
        self.name = name
        self.style = handler_style(function)
        self._function = _collecting(function)
        self._is_async = inspect.iscoroutinefunction(self._function)
        self._timeout = timeout
        self._logger = logging.getLogger(f"streamfn.function.{name}")
        self._threads = ThreadPoolExecutor(MAX_HANDLER_THREADS, thread_name_prefix=f"streamfn-{name}")

    async def invoke(self, payload: Any, request_id: str | None = None) -> Any:
        args: tuple[Any, ...] = (payload,)
        if self.style is HandlerStyle.LAMBDA:
            args = (payload, LambdaContext(self.name, self._timeout, self._logger, request_id or new_request_id()))
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                if self._is_async:
                    return await self._function(*args)
                # The thread runs in a copy of this context: the handler's log lines and spans know the invocation.
                call = contextvars.copy_context().run
                return await asyncio.get_running_loop().run_in_executor(self._threads, call, self._function, *args)
        except TimeoutError:
            if deadline.expired():  # ours, not a TimeoutError the handler raised itself
                raise InvocationTimeout(f"invocation exceeded the timeout of {self._timeout:g} s") from None
            raise

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
