"""Writes examples/clicks/clicks.jsonl: a deterministic sample clickstream for the aggregation example.

Six users click through a small shop for five minutes of event time (from 2024-06-03T09:00:00Z). Each click is a
JSON line `{"user", "page", "ts"}` with `ts` as ISO 8601 UTC text. Clicks arrive roughly in event-time order, up to
JITTER_SECONDS out of order, which is less than the pipeline's allowed lateness, so none of them is late. A few
clicks (LATE) arrive minutes after their event time, each after a later click of the same user: whatever partition
the user's key lands in, the window of such a click has closed when it arrives, so the pipeline routes it to the
topic clicks-late.

Run from the repository root to regenerate the file (the output is the same every time):

    python examples/clicks/generate.py
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 20240603
START = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
SECONDS = 300
CLICKS = 360
JITTER_SECONDS = 2.0
"""At most this far behind the newest click seen: below the pipeline's allowed_lateness (5 s)."""
ALLOWED_LATENESS_SECONDS = 5
USERS = {"ana": 5, "ben": 3, "chen": 4, "dara": 2, "eli": 1, "fay": 3}
"""User: relative activity."""
PAGES = ["/", "/search", "/products", "/products/42", "/products/77", "/cart", "/checkout", "/help"]
LATE = ((250, "ben", 170), (300, "chen", 210), (340, "ana", 230))
"""(position in the file, user, seconds behind the click before it): clicks that arrive after their window closed."""

OUT = Path(__file__).with_name("clicks.jsonl")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def clickstream() -> list[dict[str, str]]:
    rng = random.Random(SEED)
    users, weights = list(USERS), list(USERS.values())
    clicks: list[tuple[str, str, float]] = []  # (user, page, seconds since START)
    for i in range(CLICKS):
        at = max(0.0, i * SECONDS / CLICKS + rng.uniform(-JITTER_SECONDS, JITTER_SECONDS))
        clicks.append((rng.choices(users, weights)[0], rng.choice(PAGES), round(at, 3)))
    for position, user, behind in LATE:
        clicks.insert(position, (user, rng.choice(PAGES), round(clicks[position - 1][2] - behind, 3)))
    check(clicks)
    return [{"user": u, "page": p, "ts": iso(START + timedelta(seconds=at))} for u, p, at in clicks]


def check(clicks: list[tuple[str, str, float]]) -> None:
    """Only the LATE clicks are late, for any partitioning: each is behind its own user's newest click by more
    than a minute plus the lateness, and every other click is within JITTER_SECONDS of the newest click overall."""
    newest_overall = 0.0
    newest: dict[str, float] = {}
    late = {position for position, _, _ in LATE}
    for position, (user, _, at) in enumerate(clicks):
        window_end = (at // 60 + 1) * 60
        if position in late:
            assert window_end <= newest.get(user, -1e9) - ALLOWED_LATENESS_SECONDS, (position, user, at)
        else:
            assert at > newest_overall - ALLOWED_LATENESS_SECONDS, (position, user, at)
            newest_overall = max(newest_overall, at)
        newest[user] = max(newest.get(user, at), at)


def main() -> None:
    lines = [json.dumps(click) for click in clickstream()]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} clicks ({len(LATE)} late) to {OUT}")


if __name__ == "__main__":
    main()
