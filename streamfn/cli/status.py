"""What `streamfn status` reports: each function's group, offsets, lag and dead letters, as JSON or a table.

It joins no group: the source reads its group's members and committed offsets, and the true log ends
(`Source.status`); a destination that can count its records (`Countable`) gives the dead-letter depth.
"""

from __future__ import annotations

from typing import Any, Literal

from rich.table import Table

from streamfn.app import App, StreamFunction
from streamfn.failures.model import Countable
from streamfn.source import GroupStatus, PartitionStatus


async def report(app: App, servers: str | None) -> dict[str, Any]:
    """The document `status --json` prints: {"app", "functions": [one entry per function, see _function_status]}."""
    functions = []
    for function in app.functions.values():
        group = None
        if function.source is not None:
            group = await function.source.status(group_id=function.group_id, default_servers=servers)
        destination = function.config.on_failure
        # A dead-letter topic is on the function's source cluster unless it names its own.
        depth = None
        if isinstance(destination, Countable) and group is not None:
            depth = await destination.depth(group.connection)
        functions.append(function_status(function, group, depth))
    return {"app": app.name, "functions": functions}


def function_status(function: StreamFunction, group: GroupStatus | None, depth: int | None) -> dict[str, Any]:
    """One function's entry. `group_id` is null for a function fed only by Function(...) outputs (then `servers`
    and `state` are null, `members` and `partitions` empty, the lags 0). `committed` is null for a partition the
    group has committed nothing for; its lag is then end - beginning. `dead_letters` is null when `on_failure` is
    unset or cannot be counted."""
    on_failure = function.config.on_failure
    return {
        "function": function.name,
        "topics": list(function.source.topics) if function.source is not None else [],
        "group_id": group.group_id if group else None,
        "servers": group.where if group else None,
        "state": group.state if group else None,
        "members": list(group.members) if group else [],
        "partitions": [_partition(p) for p in (group.partitions if group else ())],
        "total_lag": group.total_lag if group else 0,
        "max_lag": group.max_lag if group else 0,
        "on_failure": str(on_failure) if on_failure is not None else None,
        "dead_letters": depth,
    }


def _partition(p: PartitionStatus) -> dict[str, Any]:
    """A partition's entry; a shard's adds `owner` (null: no worker holds its lease), `parents` and `children`."""
    entry = {
        "topic": p.partition.topic,
        "partition": p.partition.partition,
        "committed": p.committed,
        "beginning": p.beginning,
        "end": p.end,
        "lag": p.lag,
    }
    if p.shard is not None:
        entry |= {"owner": p.shard.owner, "parents": list(p.shard.parents), "children": list(p.shard.children)}
    return entry


STATUS_COLUMNS = ("function", "group", "members", "partition", "committed", "end", "lag", "dead letters")
SHARD_COLUMNS = ("owner", "lineage")
"""Shown before "dead letters" when a function reads shards (lease owners, parents and children)."""


def status_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"streamfn status: app {report['app']}")
    shards = any("owner" in p for f in report["functions"] for p in f["partitions"])
    columns = STATUS_COLUMNS[:-1] + (SHARD_COLUMNS if shards else ()) + STATUS_COLUMNS[-1:]
    for column in columns:
        justify: Literal["left", "right"] = "left" if column in STATUS_COLUMNS[:4] + SHARD_COLUMNS else "right"
        if column == "lineage":  # a merge's or split's shard ids are long: folded over lines, never cut
            table.add_column(column, justify=justify, overflow="fold")
        else:
            table.add_column(column, justify=justify, no_wrap=True)
    empty = ("",) * len(SHARD_COLUMNS) if shards else ()
    for f in report["functions"]:
        dead = "-" if f["dead_letters"] is None else f"{f['dead_letters']} in {f['on_failure']}"
        if f["group_id"] is None:
            table.add_row(f["function"], "-", "-", "fed by Function(...) outputs", "", "", "", *empty, dead)
            continue
        first = (f["function"], f["group_id"], f"{len(f['members'])} ({f['state']})")
        blank = ("", "", "")
        for i, p in enumerate(f["partitions"]):
            committed = "-" if p["committed"] is None else str(p["committed"])
            end = "-" if p["end"] is None else str(p["end"])
            name = p["partition"] if "owner" in p else f"{p['topic']}-{p['partition']}"  # a shard id names its stream
            cells = (name, committed, end, str(p["lag"]))
            table.add_row(*(blank if i else first), *cells, *(_shard_cells(p) if shards else ()), "" if i else dead)
        if not f["partitions"]:
            table.add_row(*first, f"no partitions: {', '.join(f['topics'])} not found", "", "", "", *empty, dead)
        else:
            lag = f"{f['total_lag']} (max {f['max_lag']})"
            table.add_row(*blank, "total", "", "", lag, *empty, "", end_section=True)
    return table


def _shard_cells(p: dict[str, Any]) -> tuple[str, str]:
    """A shard's lease owner ("-": nobody holds it) and lineage ("parents -> children")."""
    if "owner" not in p:
        return "", ""
    lineage = ""
    if p["parents"] or p["children"]:
        lineage = f"{', '.join(p['parents']) or '-'} -> {', '.join(p['children']) or '-'}"
    return p["owner"] or "-", lineage
