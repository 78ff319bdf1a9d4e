"""Helpers of the tests that run shard sources' workers as `streamfn run` processes (Kinesis, DynamoDB Streams):
the handled-records file their pipelines append to, lease owners, fairness, overlapping handling, redone work.

A pipeline's handler appends one line per handled record, "pid shard sequence start end", where start and end
bound the handler call of its batch (wall clock, one host), in one write per batch (a kill -9 cannot leave half).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HANDLER = """def handler(records):
    start = time.time()
    time.sleep(float(os.environ["SLEEP"]))
    end = time.time()
    with open(os.environ["OUT"], "a") as out:  # one write per batch: a kill -9 cannot leave half of it
        out.write("".join(f"{os.getpid()} {r.partition} {r.offset} {start} {end}\\n" for r in records))
"""
"""The handler of the pipelines (they import os and time), after their `@app.function(...)` line."""


@dataclass(frozen=True)
class Handled:
    pid: int
    shard: str
    sequence: int
    start: float
    end: float


def handled(path: Path) -> list[Handled]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line]
    return [Handled(int(p), s, int(q), float(a), float(b)) for p, s, q, a, b in lines]


def owner_pid(owner: str | None) -> int | None:
    """The process id in a worker id ("host:pid:suffix")."""
    return None if owner is None else int(owner.split(":")[-2])


def fair(owners: Callable[[], dict[str, str | None]], shards: int, workers: int) -> Callable[[], bool]:
    """Every one of `shards` shards owned (`owners()`: the lease table's owner per shard), by `workers` owners,
    each holding its fair share (2 or 3 of 8 for three workers)."""
    low, high = shards // workers, -(-shards // workers)

    def holds() -> bool:
        found = owners()
        counts = sorted(collections.Counter(found.values()).values())
        complete = len(found) == shards and None not in found.values()
        return complete and len(counts) == workers and low <= counts[0] <= counts[-1] <= high

    return holds


def overlaps(records: list[Handled]) -> list[tuple[tuple[int, float, float], tuple[int, float, float]]]:
    """Pairs of batches of one shard, handled by two processes, whose handler calls overlapped in time."""
    batches: dict[str, set[tuple[int, float, float]]] = collections.defaultdict(set)
    for r in records:
        batches[r.shard].add((r.pid, r.start, r.end))
    return [
        (a, b)
        for windows in batches.values()
        for a, b in itertools.combinations(sorted(windows), 2)
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]


def redone_late(records: list[Handled], window: float) -> list[Handled]:
    """Records handled again by a shard's next holder although the previous one had handled them more than
    `window` seconds before it stopped handling the shard (so they should have been committed). Only recent work
    is redone: a batch handled but not yet committed (commits follow each batch), or what a failed commit left
    pending for COMMIT_RETRY_SECONDS, until the holder learns of the loss (a renew period) or dies."""
    last_end: dict[tuple[int, str], float] = collections.defaultdict(float)
    for r in records:
        last_end[r.pid, r.shard] = max(last_end[r.pid, r.shard], r.end)
    first: dict[tuple[str, int], Handled] = {}
    late = []
    for r in sorted(records, key=lambda r: r.start):
        earlier = first.setdefault((r.shard, r.sequence), r)
        if earlier.pid != r.pid and last_end[earlier.pid, r.shard] - earlier.start > window:
            late.append(earlier)
    return late


async def stop_gracefully(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert await asyncio.to_thread(process.wait, 30) == 0
