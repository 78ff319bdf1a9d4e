"""A chain of functions: orders -> enrich -> topic orders-enriched -> totals per customer -> SQLite table.

`enrich` validates each order into a pydantic model, prices it and emits it keyed by customer to the topic
orders-enriched; an order that does not validate fails its batch, which is bisected until the order is isolated
and dead-lettered to orders-enrich-dlq. `totals` reads orders-enriched (each customer's orders stay in one
partition, in order, thanks to the key) and upserts one row per customer into the table customer_totals of
customer_totals.db. Each step's outputs are written before its input offsets are committed.

The running totals live in the `totals` process's memory, so they are exact for a run that starts from the
beginning of the topic, as this one does; durable aggregation state that survives restarts is what
`app.aggregate` is for.

Run it on the embedded broker with the orders sample (from the repository root):

    streamfn run examples/chain/pipeline.py --seed orders=examples/orders/orders.jsonl \
        --key-field customer --until-idle 2
    sqlite3 customer_totals.db 'SELECT * FROM customer_totals ORDER BY amount DESC LIMIT 5'
"""

import sys

from pydantic import BaseModel, Field

from streamfn import App, Output
from streamfn.connectors.kafka import KafkaSource, KafkaTopic
from streamfn.connectors.table import Table

app = App("chain")


class Order(BaseModel):
    order_id: str
    customer: str
    product: str
    quantity: int = Field(gt=0)
    unit_price: float = Field(gt=0)


class PricedOrder(BaseModel):
    order_id: str
    customer: str
    product: str
    quantity: int
    amount: float
    size: str


class CustomerTotal(BaseModel):
    customer: str
    orders: int
    quantity: int
    amount: float
    last_order: str


@app.function(
    source=KafkaSource(topics=["orders"]),
    batch_size=100,
    bisect_batch_on_function_error=True,
    maximum_retry_attempts=1,
    on_failure=KafkaTopic("orders-enrich-dlq"),
    outputs=[KafkaTopic("orders-enriched")],
)
def enrich(records):
    """Validate and price every order of the batch; a bad one fails the batch (and is bisected out)."""
    priced = []
    for record in records:
        order = Order.model_validate(record.value)
        amount = round(order.quantity * order.unit_price, 2)
        size = "large" if amount >= 500 else "small"
        enriched = PricedOrder(**order.model_dump(exclude={"unit_price"}), amount=amount, size=size)
        priced.append(Output(enriched, key=order.customer))
    return priced


running: dict[str, CustomerTotal] = {}


@app.function(
    source=KafkaSource(topics=["orders-enriched"]),
    batch_size=500,
    outputs=[Table("sqlite:///customer_totals.db", "customer_totals", key="customer", model=CustomerTotal)],
)
def totals(records):
    """Add the batch to each customer's running total and emit the customers it changed (upserted by key)."""
    changed: dict[str, CustomerTotal] = {}
    for record in records:
        order = PricedOrder.model_validate(record.value)
        total = changed.get(order.customer) or running.get(order.customer)
        if total is None:
            total = CustomerTotal(customer=order.customer, orders=0, quantity=0, amount=0.0, last_order="")
        changed[order.customer] = CustomerTotal(
            customer=order.customer,
            orders=total.orders + 1,
            quantity=total.quantity + order.quantity,
            amount=round(total.amount + order.amount, 2),
            last_order=order.order_id,
        )
    running.update(changed)
    first, last = records[0], records[-1]
    sys.stdout.write(
        f"[totals] {first.topic}-{first.partition} offsets {first.offset}-{last.offset}: "
        f"{len(records)} priced orders, {len(changed)} customer rows upserted\n"
    )
    return list(changed.values())
