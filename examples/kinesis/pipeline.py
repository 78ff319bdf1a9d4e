"""Clicks on a Kinesis stream: a Lambda-style handler with partial batch responses, and a native one.

The sample data (clicks.jsonl) holds 240 clicks of six users and three malformed lines: two clicks without a page
and one line that is not JSON. `clicks_per_user` is a handler written for Lambda's Kinesis event source, unchanged:
it reports the malformed records by sequence number (`batchItemFailures`), so only they are retried, once, and
then dropped (a finite `maximum_retry_attempts` without `on_failure`: the run's summary counts them). `pages` is a
native handler over decoded records: the line that is not JSON never reaches it, and a click without a page fails
its batch, which is bisected until the click is alone. Each function keeps its checkpoints per shard in its own
lease table (DynamoDB), which the summary's last column shows.

Run it with no AWS account, on an embedded AWS-compatible server (moto) that only `--local aws` starts, which
creates the stream (4 shards) for the seed (from the repository root):

    streamfn run examples/kinesis/pipeline.py --local aws --seed clicks=examples/kinesis/clicks.jsonl \
        --key-field user --until-idle 2

Without `--local aws` the same pipeline runs against the stream `clicks` of your AWS account (or AWS_ENDPOINT_URL).
"""

import base64
import json
import sys
from collections import Counter

from streamfn import App
from streamfn.connectors.kinesis import KinesisSource

app = App("clicks-kinesis")


def say(line: str) -> None:
    """One write per line: the sync handler runs in a thread, and print() writes the newline separately."""
    sys.stdout.write(line + "\n")


def click_of(data: bytes) -> dict | None:
    """The click a record's data holds, or None if it is malformed (not JSON, or no user or page)."""
    try:
        click = json.loads(data)
    except ValueError:
        return None
    return click if isinstance(click, dict) and {"user", "page"} <= click.keys() else None


@app.function(
    source=KinesisSource(stream="clicks", starting_position="TRIM_HORIZON"),
    batch_size=100,
    function_response_types=["ReportBatchItemFailures"],
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=1,
)
def clicks_per_user(event, context):
    """Lambda's Kinesis event: base64 data, the partition key and sequence number of each record."""
    failures, users = [], Counter()
    for record in event["Records"]:
        click = click_of(base64.b64decode(record["kinesis"]["data"]))
        if click is None:
            failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
        else:
            users[click["user"]] += 1
    first, last = event["Records"][0], event["Records"][-1]
    shard = first["eventID"].split(":")[0]
    say(
        f"[clicks_per_user] {shard} sequence {first['kinesis']['sequenceNumber']}-{last['kinesis']['sequenceNumber']}"
        f": {sum(users.values())} clicks ({', '.join(f'{u} {n}' for u, n in sorted(users.items()))})"
        f"{f', {len(failures)} malformed' if failures else ''}"
    )
    return {"batchItemFailures": failures}


@app.function(
    source=KinesisSource(stream="clicks", value_format="json"),
    batch_size=100,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=0,
)
async def pages(records):
    """Native records: the shard as partition, the sequence number as offset, the partition key as key."""
    seen = Counter(r.value["page"] for r in records)  # a click without a page fails the batch (bisected)
    say(f"[pages] {records[0].partition} {len(records)} clicks: {', '.join(f'{p} {n}' for p, n in seen.most_common())}")
