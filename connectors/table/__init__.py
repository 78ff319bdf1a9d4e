"""Tables: a function's outputs as rows of a SQLite or PostgreSQL table, upserted by key (Table)."""

from streamfn.connectors.table.sink import Table

__all__ = ["Table"]
