"""Orders: two functions over one topic, the Lambda way and the native way.

Run it on the embedded broker with its sample data (from the repository root):

    streamfn run examples/orders/pipeline.py --seed orders=examples/orders/orders.jsonl \
        --key-field customer --until-idle 2
"""

import base64
import json
import sys

from streamfn import App
from streamfn.connectors.kafka import KafkaSource

app = App("orders")


def say(line: str) -> None:
    """One write per line: the sync handler runs in a thread, and print() writes the newline separately."""
    sys.stdout.write(line + "\n")


@app.function(
    source=KafkaSource(topics=["orders"], starting_position="TRIM_HORIZON"),
    batch_size=50,
    maximum_batching_window_in_seconds=0.5,
    timeout=30,
)
def audit(event, context):
    """A handler written for Lambda's Kafka event source, unchanged: base64 values keyed by topic-partition."""
    for key, records in event["records"].items():
        orders = [json.loads(base64.b64decode(r["value"])) for r in records]
        total = sum(o["quantity"] * o["unit_price"] for o in orders)
        say(
            f"[audit {context.aws_request_id[:8]}] {key} offsets {records[0]['offset']}-{records[-1]['offset']}: "
            f"{len(orders)} orders worth {total:.2f}"
        )


@app.function(source=KafkaSource(topics=["orders"], value_format="json"), batch_size=100)
async def large_orders(records):
    """A native handler: decoded values, one partition's batch at a time."""
    for record in records:
        order = record.value
        amount = order["quantity"] * order["unit_price"]
        if amount >= 500:
            say(
                f"[large_orders] {record.topic}-{record.partition}@{record.offset} "
                f"order {order['order_id']} by {order['customer']}: {amount:.2f}"
            )
