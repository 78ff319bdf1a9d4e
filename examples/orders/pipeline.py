"""Orders: two functions over one topic, the Lambda way and the native way, with dead-letter topics.

The sample data carries three malformed orders. `audit` bisects its failing batches until each bad order is
isolated and sends it, after one retry, to the topic orders-audit-dlq; `large_orders` never sees the order that is
not JSON (it goes to orders-large-dlq as a DeserializationError) and dead-letters the two it cannot price.

Run it on the embedded broker with its sample data (from the repository root):

    streamfn run examples/orders/pipeline.py --seed orders=examples/orders/orders.jsonl \
        --key-field customer --until-idle 2
"""

import base64
import json
import sys

from streamfn import App
from streamfn.connectors.kafka import KafkaSource, KafkaTopic

app = App("orders")


def say(line: str) -> None:
    """One write per line: the sync handler runs in a thread, and print() writes the newline separately."""
    sys.stdout.write(line + "\n")


@app.function(
    source=KafkaSource(topics=["orders"], starting_position="TRIM_HORIZON"),
    batch_size=50,
    maximum_batching_window_in_seconds=0.5,
    timeout=30,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=1,
    on_failure=KafkaTopic("orders-audit-dlq"),
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


@app.function(
    source=KafkaSource(topics=["orders"], value_format="json"),
    batch_size=100,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=1,
    on_failure=KafkaTopic("orders-large-dlq"),
)
async def large_orders(records):
    """A native handler: decoded values, one partition's batch at a time.

    It prices the whole batch before printing anything: a batch that fails is invoked again (bisected here),
    so side effects belong after the last thing that can fail.
    """
    priced = [(record, record.value["quantity"] * record.value["unit_price"]) for record in records]
    for record, amount in priced:
        if amount >= 500:
            order = record.value
            say(
                f"[large_orders] {record.topic}-{record.partition}@{record.offset} "
                f"order {order['order_id']} by {order['customer']}: {amount:.2f}"
            )
