"""The garbage collector while a worker runs: what CPython's cycle collector would otherwise cost per record.

A worker holds records for a while by design (fetched chunks in partition buffers, a batch's decoded `Record`s and
Lambda events until the batch is done), so most objects it allocates outlive CPython's default young generation
(700 allocations): each is traversed by a young and a middle collection, promoted, and then by every full collection,
which also walks the whole heap of the process (modules, classes, clients). Measured on the count+sum bench, the
collector took more than half of the worker's CPU per record (2.6 of 4.7 µs at batch_size 10,000; a plain
aiokafka loop, whose records die within one fetch, 1.0 of 2.9 µs).

While a worker runs (`collecting_for_worker`): the heap that exists at its start is frozen (`gc.freeze`: left out
of every collection; it is what the process imported and configured), and the young generation collects after
`YOUNG_THRESHOLD` allocations, so a batch's objects mostly die of reference counting before any collection sees
them. Cycles are still collected, only later: at most `YOUNG_THRESHOLD` allocations of garbage wait. Once the last
worker of the process stops, the thresholds are restored and the frozen heap is collectable again.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000
"""Allocations (minus deallocations) of tracked objects between young collections; CPython's default is 700."""

_running = 0
"""Workers of this process running now: the first one sets the collector up, the last one restores it."""
_restore: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def collecting_for_worker() -> Iterator[None]:
    """The collector settings of a running worker, for the time of the `with` block (see the module docstring)."""
    global _running, _restore
    if _running == 0:
        _restore = gc.get_threshold()
        young, middle, old = _restore
        gc.freeze()
        if young:  # 0: the process turned automatic collection off; it stays off
            gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    _running += 1
    try:
        yield
    finally:
        _running -= 1
        if _running == 0:
            gc.set_threshold(*_restore)
            gc.unfreeze()
