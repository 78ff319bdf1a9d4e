"""Orders in a DynamoDB table, read from its stream twice: running totals per customer written to another table by a
native function, and a Lambda-style handler that gets Lambda's DynamoDB Streams event, unchanged.

The sample (orders.jsonl) holds 40 orders of five customers, each line one item of the table `orders`, keyed by
`order_id`. Three order ids come twice (a changed quantity: the second put is a MODIFY in the stream, with the old
and the new image), and two orders are malformed (an amount that is not a number).

`totals` gets each change as a `Change` whose new image is validated into `Order` (`value_model`): a malformed order
never reaches it; it fails validation (DeserializationError) and, with `maximum_retry_attempts=0` and no
`on_failure`, is dropped, logged on stderr and counted in the summary's `dropped` column. In production one would
name a dead-letter queue instead, `on_failure="arn:aws:sqs:<region>:<account>:orders-dlq"` (Lambda's failure
record with DDBStreamBatchInfo); on the embedded server that queue would have to be created first, so the example
keeps to the explicit drop policy. `totals` keeps each customer's order count and amount: an INSERT adds the order,
a MODIFY takes the old image's order back and adds the new one (an order may change customer), a REMOVE takes it
back; it emits one item per customer its batch touched to the table `customer_totals` (upserted by `customer`; on
the embedded server the sink creates that table, declared with `key=`) and prints those totals, so the run's last
`[totals]` line of each customer is its final total.

The running totals live in this process's memory, so they are exact for a run that reads the stream from its start
(TRIM_HORIZON), as this one does; state that survives restarts is what `app.aggregate` is for.

`audit` is a handler written for Lambda: it prints each batch's event names and sequence number range.

Run it with no AWS account, on the embedded AWS-compatible server (moto) that only `--local aws` starts, which
creates the table `orders` (partition key `order_id`, a NEW_AND_OLD_IMAGES stream) for the seed (from the
repository root):

    streamfn run examples/dynamodb/pipeline.py --local aws --seed orders=examples/dynamodb/orders.jsonl \
        --key-field order_id --until-idle 2

Without `--local aws` the same pipeline reads the stream of the table `orders` of your AWS account (or of
AWS_ENDPOINT_URL), and writes to its table `customer_totals`, which must exist there (key: customer, a string).
"""

import sys
from collections import Counter
from decimal import Decimal

from pydantic import BaseModel, Field, ValidationError

from streamfn import App
from streamfn.connectors.dynamodb import DynamoDBStreamSource, DynamoDBTable

app = App("orders-dynamodb")


def say(line: str) -> None:
    """One write per line: a sync handler runs in a thread, and print() writes the newline separately."""
    sys.stdout.write(line + "\n")


class Order(BaseModel):
    order_id: str
    customer: str
    product: str
    quantity: int = Field(gt=0)
    amount: Decimal = Field(ge=0)


running: dict[str, dict] = {}
"""Per customer: {"customer", "orders", "amount"}, as its item in customer_totals."""


def counted(image: dict | None) -> Order | None:
    """The order an old image stands for in the totals: None when there is none (an INSERT) or it is malformed
    (its change was dropped, so it was never counted)."""
    if image is None:
        return None
    try:
        return Order.model_validate(image)
    except ValidationError:
        return None


@app.function(
    source=DynamoDBStreamSource(table="orders", starting_position="TRIM_HORIZON"),
    value_model=Order,
    maximum_retry_attempts=0,
    outputs=[DynamoDBTable("customer_totals", key="customer")],
)
async def totals(records):
    """Native records: the value a Change (event_name, keys, new_image an Order, old_image a dict)."""
    touched = {}
    for record in records:
        change = record.value
        for order, sign in ((counted(change.old_image), -1), (change.new_image, 1)):
            if order is not None:
                total = running.setdefault(
                    order.customer, {"customer": order.customer, "orders": 0, "amount": Decimal(0)}
                )
                total["orders"] += sign
                total["amount"] += sign * order.amount
                touched[order.customer] = total
    first, last = records[0], records[-1]
    say(
        f"[totals] {first.partition} sequence {first.offset}-{last.offset}: {len(records)} changes; "
        + ", ".join(f"{c} {t['orders']} orders {t['amount']:.2f}" for c, t in sorted(touched.items()))
    )
    return [dict(total) for total in touched.values()]


@app.function(source=DynamoDBStreamSource(table="orders", starting_position="TRIM_HORIZON"))
def audit(event, context):
    """Lambda's DynamoDB Streams event: eventName, dynamodb.Keys / NewImage / OldImage in DynamoDB's JSON."""
    records = event["Records"]
    names = Counter(r["eventName"] for r in records)
    first, last = records[0]["dynamodb"]["SequenceNumber"], records[-1]["dynamodb"]["SequenceNumber"]
    say(f"[audit] sequence {first}-{last}: {', '.join(f'{n} {name}' for name, n in sorted(names.items()))}")
