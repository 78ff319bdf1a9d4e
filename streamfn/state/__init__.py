"""State of stateful functions: stores, the changelog interface, time windows, aggregations, tumbling windows."""
