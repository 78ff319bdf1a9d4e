"""The threads sync handlers run on: each lane has its own, and a call that timed out is abandoned, not waited for.

Python cannot kill a thread, so a sync handler that hangs keeps its thread until it returns, if ever. A pool
shared by a function's partitions would fill up with hung calls and starve every partition; here a lane takes a
fresh thread when its call timed out, so a hung handler only holds up its own lane. Two bounds keep abandoned
threads from piling up:

- per lane (`MAX_ABANDONED_PER_LANE`): past it the lane waits for one of them to return before invoking again.
  Only that lane waits (its partition's records pend, which `/live`'s stuck detection sees).
- per worker (`MAX_ABANDONED_PER_WORKER`): past it the worker cannot be trusted to make progress: it logs at
  CRITICAL naming the function and stops with exit code 70 after committing what was done, so that a supervisor
  restarts it (as Lambda replaces a sandbox whose invocation timed out).

A call's timeout starts only once it runs (the invoker's clock): it never counts time spent waiting for a thread.
The threads are daemons: a hung handler never keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from streamfn.engine import supervision

log = logging.getLogger("streamfn.threads")

MAX_ABANDONED_PER_LANE = 8
"""Timed-out sync calls of one lane still running before the lane waits for one of them to return."""
MAX_ABANDONED_PER_WORKER = 256
"""Timed-out sync calls of the whole worker still running before it stops to be restarted."""

Done = Callable[[Any, BaseException | None], None]


class _Thread:
    """A daemon thread running one call at a time, handing each outcome back to the event loop."""

    __slots__ = ("_calls", "abandoned", "running")

    def __init__(self, name: str) -> None:
        self._calls: SimpleQueue[tuple[asyncio.AbstractEventLoop, Done, Callable[..., Any], tuple[Any, ...]] | None]
        self._calls = SimpleQueue()
        self.running = False
        self.abandoned = False
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def start(
        self, loop: asyncio.AbstractEventLoop, done: Done, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self.running = True
        self._calls.put((loop, done, function, args))

    def close(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        get = self._calls.get
        while (call := get()) is not None:
            if not _run(*call):
                return


def _run(loop: asyncio.AbstractEventLoop, done: Done, function: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    """One call, its outcome handed to the loop (a function: nothing of it stays referenced afterwards). False if
    the loop is closed: nobody waits for this thread any more."""
    try:
        outcome: tuple[Any, BaseException | None] = (function(*args), None)
    except BaseException as error:  # all of it: the invoker decides what a SystemExit means
        outcome = (None, error)
    try:
        loop.call_soon_threadsafe(done, *outcome)
    except RuntimeError:
        return False
    return True


class LaneThreads:
    """The threads of one lane's sync calls: as many as its calls running at once, plus those abandoned."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._supervisor = supervision.current()
        self._idle: list[_Thread] = []
        self._closed = False
        self.abandoned = 0
        """Calls of this lane that timed out and are still running."""
        self._returned = asyncio.Event()

    async def call(self, function: str, target: Callable[..., Any], *args: Any) -> Any:
        """`target(*args)` (a call of `function`'s handler) on a thread of this lane; if the awaiting task is
        cancelled (its timeout), the call is abandoned: the lane's next call gets another thread."""
        thread = self._idle.pop() if self._idle else _Thread(self._name)
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            thread.running = False
            if thread.abandoned:
                thread.abandoned = False
                self._abandoned_returned()
            elif not future.cancelled():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            if self._closed:
                thread.close()
            else:
                self._idle.append(thread)

        thread.start(loop, done, target, args)
        try:
            return await future
        except asyncio.CancelledError:
            if thread.running:
                thread.abandoned = True
                self._abandon(function)
            raise

    async def wait_for_room(self, function: str) -> None:
        """Before a call: past `MAX_ABANDONED_PER_LANE`, wait until one of the lane's abandoned calls returns."""
        if self.abandoned >= MAX_ABANDONED_PER_LANE:
            log.error(
                "function %s: %d timed-out invocations of this lane are still running: waiting for one to return "
                "before invoking again (only this lane waits)",
                function,
                self.abandoned,
            )
            while self.abandoned >= MAX_ABANDONED_PER_LANE:
                self._returned.clear()
                await self._returned.wait()

    def close(self) -> None:
        """The lane is over: idle threads end now, abandoned ones when their call returns."""
        self._closed = True
        for thread in self._idle:
            thread.close()
        self._idle.clear()

    def _abandon(self, function: str) -> None:
        self.abandoned += 1
        supervisor = self._supervisor
        supervisor.abandoned_calls += 1
        if supervisor.abandoned_calls > MAX_ABANDONED_PER_WORKER and supervisor.failure is None:
            supervisor.fail(
                f"function {function}: {supervisor.abandoned_calls} timed-out sync invocations are still running "
                f"in this worker (more than {MAX_ABANDONED_PER_WORKER}); Python cannot kill their threads"
            )

    def _abandoned_returned(self) -> None:
        self.abandoned -= 1
        self._supervisor.abandoned_calls -= 1
        self._returned.set()


_lane: contextvars.ContextVar[LaneThreads | None] = contextvars.ContextVar("streamfn_lane_threads", default=None)


def use(threads: LaneThreads) -> None:
    """The current task (a lane) and the tasks it creates run their sync calls on `threads`."""
    _lane.set(threads)


def of_lane() -> LaneThreads | None:
    """The running lane's threads (None outside a lane)."""
    return _lane.get()
