"""Calling a user's handler: which style it is, sync or async, bounded by the function's timeout, and what its
outcome means.

Sync handlers run on their lane's threads (streamfn/engine/threads.py) so a slow or blocking handler never stalls the
event loop, which keeps heartbeats, fetches and other partitions going, and a hung one holds up only its own lane.
Whatever a handler raises is a function error, as in Lambda, `SystemExit` and other `BaseException`s included
(`RuntimeExit`); so is a Lambda-style response that cannot be serialised (`MarshalError`) and a native handler's
`BatchItemFailures` when the function does not report item failures (`UnreportedItemFailures`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel

from streamfn.context import LambdaContext, new_request_id
from streamfn.engine import threads, watchdog
from streamfn.failures.model import BatchItemFailures, StopProcessing
from streamfn.style import HandlerStyle, handler_style


class InvocationTimeout(Exception):
    """The handler did not return within the function's timeout (a function error, as in Lambda)."""


class RuntimeExit(Exception):
    """The handler raised a BaseException that is not an Exception (`sys.exit()`, KeyboardInterrupt, a custom
    one): Lambda's runtime process would have exited, a function error of type `Runtime.ExitError`."""

    error_type = "Runtime.ExitError"

    def __init__(self, request_id: str, raised: BaseException) -> None:
        status = f"exit status {raised.code}" if isinstance(raised, SystemExit) else f"{type(raised).__name__}"
        detail = "" if isinstance(raised, SystemExit) or not str(raised) else f": {raised}"
        super().__init__(f"RequestId: {request_id} Error: Runtime exited with error: {status}{detail}")


class MarshalError(Exception):
    """A Lambda-style handler returned what cannot be serialised to JSON (Lambda's `Runtime.MarshalError`)."""

    error_type = "Runtime.MarshalError"


class UnreportedItemFailures(Exception):
    """A native handler raised or returned BatchItemFailures, but the function does not report item failures:
    the invocation failed as a whole (never a success)."""


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
    """Invokes one function's handler with a payload, enforcing its timeout; every way it can fail is a function
    error (an Exception), never an exception that would end the lane or the worker."""

    def __init__(
        self, name: str, function: Callable[..., Any], timeout: float, reports_item_failures: bool = False
    ) -> None:
        self.name = name
        self.style = handler_style(function)
        self._function = _collecting(function)
        self._is_async = inspect.iscoroutinefunction(self._function)
        self._timeout = timeout
        self._reports_item_failures = reports_item_failures
        self._warned_unreported = False
        self._logger = logging.getLogger(f"streamfn.function.{name}")
        self._threads = threads.LaneThreads(f"streamfn-{name}")
        """For calls outside any lane (a lane's own threads otherwise)."""
        if self._is_async:
            watchdog.name_handler(function, name)

    async def invoke(self, payload: Any, request_id: str | None = None) -> Any:
        request_id = request_id or new_request_id()
        args: tuple[Any, ...] = (payload,)
        if self.style is HandlerStyle.LAMBDA:
            args = (payload, LambdaContext(self.name, self._timeout, self._logger, request_id))
        lane_threads = None
        if not self._is_async:
            lane_threads = threads.of_lane() or self._threads
            if lane_threads.abandoned >= threads.MAX_ABANDONED_PER_LANE:
                await lane_threads.wait_for_room(self.name)  # before the clock starts: only the handler's run counts
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                if lane_threads is None:
                    response = await self._function(*args)
                else:
                    # The thread runs in a copy of this context: the handler's log lines and spans know the invocation.
                    call = contextvars.copy_context().run
                    response = await lane_threads.call(self.name, call, self._function, *args)
        except TimeoutError:
            if deadline.expired():  # ours, not a TimeoutError the handler raised itself
                raise InvocationTimeout(f"invocation exceeded the timeout of {self._timeout:g} s") from None
            raise
        except BatchItemFailures as reported:
            if self._reports_item_failures:
                raise
            raise UnreportedItemFailures(_UNREPORTED) from reported
        except Exception:
            raise
        except BaseException as raised:
            if isinstance(raised, asyncio.CancelledError) and _cancelled_by_engine():
                raise
            if isinstance(raised, StopProcessing) and lane_threads is None:  # the engine's, not from a thread
                raise
            raise RuntimeExit(request_id, raised) from raised
        return self._checked(response)

    def _checked(self, response: Any) -> Any:
        """What the function's failure policy may read of a response, per its style and function_response_types."""
        if self.style is HandlerStyle.LAMBDA:
            if response is not None:
                try:
                    orjson.dumps(response, default=_marshal)
                except TypeError as error:
                    raise MarshalError(f"Unable to marshal response: {error}") from None
                if (
                    not self._reports_item_failures
                    and not self._warned_unreported
                    and isinstance(response, dict)
                    and response.get("batchItemFailures")
                ):
                    self._warned_unreported = True
                    self._logger.warning(
                        "function %s: the handler returned batchItemFailures, but function_response_types does not "
                        "include 'ReportBatchItemFailures': the response counts as a success (as in Lambda)",
                        self.name,
                    )
        elif isinstance(response, BatchItemFailures) and not self._reports_item_failures:
            raise UnreportedItemFailures(_UNREPORTED)
        return response

    def close(self) -> None:
        self._threads.close()


_UNREPORTED = (
    "the handler reported BatchItemFailures, but function_response_types does not include "
    "'ReportBatchItemFailures': the whole batch failed"
)


def _cancelled_by_engine() -> bool:
    """A CancelledError the engine asked for (a timeout, a lane stopping), not one a handler raised itself."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _marshal(value: Any) -> Any:
    """What orjson cannot serialise but streamfn's sinks write: pydantic models, bytes (written as they are)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, bytes | bytearray):
        return ""
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
