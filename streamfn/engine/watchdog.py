"""The event loop's watchdog: notices when something blocks the loop (an async handler calling `time.sleep`, a
blocking client) and says which handler it was.

Every partition of every function shares the one event loop, so an async handler that blocks it stalls them all,
heartbeats included. A task in the loop updates a heartbeat; a thread checks it. Past `LAG_SECONDS` without a
beat, the thread logs an error naming the async handler on the loop thread's stack (found by its code object,
which costs the invocations nothing), counts it (the `streamfn.event_loop.blocked` metric) and `/live`, served on
its own thread, answers 503 for as long as the loop stays blocked.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any

log = logging.getLogger("streamfn.watchdog")

BEAT_SECONDS = 0.1
"""How often the loop updates its heartbeat."""
LAG_SECONDS = 1.0
"""How long the loop may go without a beat before it counts as blocked."""
CHECK_SECONDS = 0.25
"""How often the watchdog thread looks at the heartbeat."""

UNKNOWN = ""
"""The function of a blockage with no async handler on the loop's stack (the engine, a sink, a callback)."""

_handlers: dict[CodeType, str] = {}
"""The code of every async handler -> its function's name."""


def name_handler(function: Callable[..., Any], name: str) -> None:
    """Let the watchdog name `function` when it finds its code running on a blocked loop."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    if isinstance(code, CodeType):
        _handlers[code] = name


class LoopWatchdog:
    def __init__(self) -> None:
        self.beat = time.monotonic()
        self.blocked: dict[str, int] = {}
        """Times the loop was found blocked, by the function whose async handler was running (UNKNOWN if none)."""
        self._loop_thread: int | None = None
        self._stopped = threading.Event()

    def blocked_for(self, now: float) -> float:
        """How long the loop has been blocked (0 unless past LAG_SECONDS without a beat)."""
        lag = now - self.beat
        return lag if self._loop_thread is not None and lag > LAG_SECONDS else 0.0

    async def run(self) -> None:
        """Beat until cancelled, with the watchdog thread watching."""
        self._loop_thread = threading.get_ident()
        self._stopped.clear()
        threading.Thread(target=self._watch, name="streamfn-watchdog", daemon=True).start()
        try:
            while True:
                self.beat = time.monotonic()
                await asyncio.sleep(BEAT_SECONDS)
        finally:
            self._stopped.set()
            self._loop_thread = None  # a stopped worker's loop is not blocked

    def _watch(self) -> None:
        blocked_since: float | None = None
        while not self._stopped.wait(CHECK_SECONDS):
            beat = self.beat
            lag = time.monotonic() - beat
            if lag <= LAG_SECONDS:
                if blocked_since is not None:
                    log.warning("the event loop runs again after being blocked for %.1f s", beat - blocked_since)
                blocked_since = None
                continue
            if blocked_since == beat:
                continue  # this blockage is reported already
            blocked_since = beat
            function = self._running_handler()
            self.blocked[function] = self.blocked.get(function, 0) + 1
            if function == UNKNOWN:
                log.error("the event loop has been blocked for %.1f s (no async handler running)", lag)
            else:
                log.error(
                    "function %s: its async handler has blocked the event loop for %.1f s: every partition of every "
                    "function waits meanwhile (await instead of blocking, or make the handler sync)",
                    function,
                    lag,
                )

    def _running_handler(self) -> str:
        """The function whose async handler is on the loop thread's stack, innermost first."""
        frame = sys._current_frames().get(self._loop_thread or 0)
        while frame is not None:
            name = _handlers.get(frame.f_code)
            if name is not None:
                return name
            frame = frame.f_back
        return UNKNOWN
