"""Clicks per user per minute: a windowed aggregation into a SQLite table, printing each window as it closes.

`per_minute` folds the clicks of the topic `clicks` into one-minute tumbling windows per user, by the event time
in each click's `ts` field, counting clicks and the distinct pages visited. A window closes once the clicks of its
partition have gone 5 s (the allowed lateness) past its end, or once the partition has been quiet for 2 s; its
result (user, window_start, window_end, clicks, distinct_pages, pages) is then upserted into the table
per_minute of clicks.db and handed to `show`, which prints it. A click that arrives after its window closed is
late: it goes to the topic clicks-late. The sample holds three such clicks.

Windows are per source partition, so a user's clicks must share a partition: --key-field user keys each seeded
click by its user. Run it on the embedded broker with its sample data (from the repository root):

    streamfn run examples/clicks/pipeline.py --seed clicks=examples/clicks/clicks.jsonl \
        --key-field user --until-idle 3
    sqlite3 clicks.db 'SELECT user, window_start, clicks, distinct_pages FROM per_minute ORDER BY 2, 1'

The sample is written by examples/clicks/generate.py (deterministic; run it to regenerate).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from streamfn import App, Function, Record, Tumbling
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.table import Table

app = App("clicks")
console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)


@app.function()  # no source: fed only by the Function(show) output of per_minute, one call per set of windows
async def show(windows: list[Record]) -> None:
    """Print each closed window as one line."""
    for window in windows:
        row = window.value
        console.print(
            f"[bold]\\[window][/] {row['window_start'][11:16]}-{row['window_end'][11:16]} "
            f"[cyan]{row['user']:<5}[/] {row['clicks']:>3} clicks, {row['distinct_pages']} distinct pages "
            f"[dim](clicks-{window.partition})[/]"
        )


@app.aggregate(
    source=KafkaSource(topics=["clicks"], starting_position="TRIM_HORIZON"),
    key="user",
    window=Tumbling(60),
    timestamp="ts",  # ISO 8601 text in the value; "record" would use the Kafka record's timestamp
    allowed_lateness=5,
    outputs=[Table("sqlite:///clicks.db", "per_minute", key=("user", "window_start")), Function(show)],
    on_failure=KafkaTopic("clicks-late"),  # late clicks, as LateRecord dead letters
    window_idle_seconds=2,  # a partition quiet for 2 s closes its windows: the sample's last minute closes too
)
def per_minute(window: dict[str, Any] | None, click: Record) -> dict[str, Any]:
    """Fold one click into its user's window: a new small dict each time, the pages as a sorted list."""
    pages = sorted({*(window["pages"] if window else ()), click.value["page"]})
    return {"clicks": (window["clicks"] if window else 0) + 1, "distinct_pages": len(pages), "pages": pages}
