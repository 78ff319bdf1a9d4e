"""The aggregation example as the README runs it: clicks per user per minute into SQLite, late clicks to a topic.

The expected windows are computed here from clicks.jsonl alone (minute of each click's `ts`, per user). Which
clicks are late is decided without knowing the partitions: a click whose window ends at least the allowed lateness
before a previous click of the same user is late in any partitioning, and one within the lateness of every previous
click is late in none; the sample holds only these two kinds, which this test checks too.
"""

from __future__ import annotations

import base64
import re
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import committed, read_topic, run_cli

pytestmark = pytest.mark.slow  # every test here starts streamfn processes

ROOT = Path(__file__).resolve().parent.parent
CLICKS = ROOT / "examples/clicks/clicks.jsonl"
ALLOWED_LATENESS_MS = 5000
MINUTE_MS = 60_000


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SUMMARY_CHECKED = ("polled", "handled", "outputs", "dead-lettered", "windows closed", "late", "committed")


def _summary(stdout: str) -> dict[str, dict[str, str]]:
    """The run summary's rows by function, each by column name (from the header row)."""
    lines = stdout.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("┃")).split("┃")[1:-1]]
    rows = ([c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│"))
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows if cells[0]}


def _expected() -> tuple[dict[tuple[str, str], tuple[int, list[str]]], list[dict[str, Any]]]:
    """Per (user, window_start): (clicks, sorted distinct pages); and the late clicks, in file order."""
    clicks = [orjson.loads(line) for line in CLICKS.read_text().splitlines() if line]
    newest_of_user: dict[str, int] = {}
    newest = -1
    windows: dict[tuple[str, str], list[str]] = defaultdict(list)
    late: list[dict[str, Any]] = []
    for click in clicks:
        ms = _ms(click["ts"])
        window_end = ms // MINUTE_MS * MINUTE_MS + MINUTE_MS
        late_for_user = window_end <= newest_of_user.get(click["user"], -1) - ALLOWED_LATENESS_MS
        late_overall = window_end <= newest - ALLOWED_LATENESS_MS
        assert late_for_user == late_overall, f"{click}: late or not depending on the partitions"
        newest_of_user[click["user"]] = max(newest_of_user.get(click["user"], ms), ms)
        newest = max(newest, ms)
        if late_for_user:
            late.append(click)
        else:
            windows[(click["user"], _utc(ms // MINUTE_MS * MINUTE_MS))].append(click["page"])
    return {w: (len(pages), sorted(set(pages))) for w, pages in windows.items()}, late


async def test_clicks_example_counts_per_user_per_minute_and_routes_late_clicks(broker: str, tmp_path: Path) -> None:
    expected, late = _expected()
    assert len(late) == 3 and len(expected) == 30
    # The README's command, on the session's broker instead of an embedded one, so the late topic can be read.
    result = run_cli(
        "run",
        str(ROOT / "examples/clicks/pipeline.py"),
        "--seed",
        f"clicks={CLICKS}",
        "--key-field",
        "user",
        "--until-idle",
        "3",
        servers=broker,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "seeded 363 records" in result.stdout

    with sqlite3.connect(tmp_path / "clicks.db") as db:
        rows = db.execute("SELECT user, window_start, window_end, clicks, distinct_pages, pages FROM per_minute")
        table = {(u, start): (end, n, distinct, orjson.loads(pages)) for u, start, end, n, distinct, pages in rows}
    assert {w: (n, pages) for w, (_, n, _, pages) in table.items()} == expected
    for (_, start), (end, _, distinct, pages) in table.items():
        assert _ms(end) - _ms(start) == MINUTE_MS and distinct == len(pages)

    # One printed line per closed window, as it closed.
    printed = re.findall(r"^\[window\] (\d\d:\d\d)-\d\d:\d\d (\w+) +(\d+) clicks, (\d+) distinct", result.stdout, re.M)
    assert sorted((u, f"2024-06-03T{hm}:00Z", int(n), int(d)) for hm, u, n, d in printed) == sorted(
        (u, start, n, len(pages)) for (u, start), (n, pages) in expected.items()
    )

    # The late clicks are dead letters on clicks-late, keyed by user, with the original click in the payload.
    letters = await read_topic(broker, "clicks-late", len(late) + 1, timeout=5)
    assert len(letters) == len(late)
    originals = []
    for letter in letters:
        body = orjson.loads(letter.value)
        assert body["errorType"] == "LateRecord" and dict(letter.headers)["streamfn.error.condition"] == b"LateRecord"
        [[record]] = body["payload"]["records"].values()
        originals.append(orjson.loads(base64.b64decode(record["value"])))
        assert letter.key == originals[-1]["user"].encode()
    assert sorted(originals, key=lambda c: c["ts"]) == sorted(late, key=lambda c: c["ts"])

    summary = _summary(result.stdout)
    assert {column: summary["per_minute"][column] for column in SUMMARY_CHECKED} == {
        "polled": "363",
        "handled": "360",
        "outputs": "30",  # one result per user and minute
        "dead-lettered": "3",  # the late clicks
        "windows closed": "30",
        "late": "3",
        "committed": "363",
    }, summary["per_minute"]
    assert summary["show"]["handled"] == "30", summary["show"]
    assert sum(o or 0 for o in (await committed(broker, "clicks-per_minute", "clicks")).values()) == 363
