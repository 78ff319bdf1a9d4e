"""Every engine task has a supervisor: no task whose exception can vanish, and no silent hang.

An engine task (a poller, a lane, a lane's completion, the committer, the progress view, the `--until-idle`
watcher) that ends with an exception is a bug or a broken invariant, never a record's failure (those are handled
by the failure policy). Such a death is logged at CRITICAL with its traceback and stops the worker the graceful
way: every poller finishes its in-flight work and commits what was done, then `Worker.run` raises
`EngineFailure`, which `streamfn run` turns into exit code 70 (EX_SOFTWARE) so that a supervisor restarts it.
The same path serves other conditions a restart cures (too many timed-out sync invocations still running).

Tasks find their supervisor through a context variable the worker sets before it starts its pollers: every task
created from there inherits it, however deep (aiokafka's assignment callbacks included).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from streamfn.errors import ConfigError, Unreachable
from streamfn.failures.model import StopProcessing

log = logging.getLogger("streamfn.supervision")

T = TypeVar("T")

ENGINE_FAILURE_EXIT = 70
"""`streamfn run`'s exit code after an engine failure (sysexits' EX_SOFTWARE): restart me, nothing was lost."""

STOPPED = (asyncio.CancelledError, StopProcessing)
"""How a task ends when it was told to stop: not a failure."""


class EngineFailure(Exception):
    """The worker stopped because an engine task died (or could not go on); what was done is committed."""

    def __init__(self, reason: str, summary: Any) -> None:
        super().__init__(reason)
        self.summary = summary
        """The worker's run summary (`list[FunctionSummary]`), as `Worker.run` would have returned it."""


class Supervisor:
    """Watches the tasks of one worker; the first failure stops the worker (`stop`) and is kept as `failure`."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.failure: str | None = None
        """Why the worker is stopping, once an engine task died or a bound was passed."""
        self.user_error: ConfigError | Unreachable | None = None
        """A task's configuration error (a destination that cannot start, say: the CLI's exit code 2) or a cluster
        it could not reach within --connect-timeout (exit code 1): the user's to fix, said in one line."""
        self.abandoned_calls = 0
        """Sync invocations that timed out and are still running on their threads, worker-wide
        (streamfn/engine/threads.py keeps it and stops the worker past its bound)."""
        self._reported: list[BaseException] = []
        """Errors already logged (a completion's error also ends the lane awaiting it: one report)."""

    def spawn(self, coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """`asyncio.create_task`, with this supervisor told if the task dies."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._ended)
        return task

    def fail(self, reason: str, error: BaseException | None = None) -> None:
        """Log `reason` at CRITICAL (with `error`'s traceback) and stop the worker, once per distinct error."""
        if error is not None:
            if any(error is seen for seen in self._reported):
                return
            self._reported.append(error)  # held, so that its identity is never another error's
        log.critical("%s: stopping the worker (exit code %d)", reason, ENGINE_FAILURE_EXIT, exc_info=error)
        if self.failure is None:
            self.failure = reason
            self._stop()

    def install(self) -> contextvars.Token[Supervisor | None]:
        """Make this the supervisor of every task created from the current context on."""
        return _current.set(self)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None or isinstance(error, StopProcessing):
            return
        if isinstance(error, ConfigError | Unreachable):  # not a bug: the CLI prints it as one line
            if self.user_error is None:
                self.user_error = error
                self._stop()
            return
        self.fail(f"engine task {task.get_name()} died: {type(error).__name__}: {error}", error)


_current: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar("streamfn_supervisor", default=None)


def current() -> Supervisor:
    """The supervisor of the running worker; outside one (a component used alone), one that only logs."""
    return _current.get() or _UNSUPERVISED


def spawn(coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Create an engine task supervised by the running worker's supervisor (see `Supervisor.spawn`)."""
    return current().spawn(coroutine, name=name)


_UNSUPERVISED = Supervisor(lambda: None)
