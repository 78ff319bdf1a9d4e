"""The source conformance suite: the same scenarios run against every source, each through a small harness.

A source passes when the engine keeps Lambda's promises on it: order within a key, a commit never past an unhandled
record, bisection and partial batch responses, rebalances, and (for sources with leases and shards that end) lost
leases and shard ends with children. `harness.py` says what a harness does; `kafka.py` and `memory.py` are the two
sources of today. A scenario a source cannot express is skipped for it, with the reason, through a capability flag.
"""

import pytest

# The harness's checks (the ledger's) are plain asserts: show their values when they fail, as in a test module.
pytest.register_assert_rewrite("conformance.harness")
