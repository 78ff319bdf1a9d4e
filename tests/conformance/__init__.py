"""The source conformance suite: the same scenarios run against every source, each through a small harness.

A source passes when the engine keeps Lambda's promises on it: order within a key, a commit never past an unhandled
record, bisection and partial batch responses, rebalances, and (for sources with leases and shards that end) lost
leases and shard ends with children. `harness.py` says what a harness does; `kafka.py` and `memory.py` are the two
sources of today. A scenario a source cannot express is skipped for it, with the reason, through a capability flag.

A new source joins with a module here implementing `Harness` and `Stream` (create a stream of N partitions, put
records, the Source a function declares, its checkpoints as covered counts, its dead letters; `take`, `split`,
`merge` if its flags say so) and its name in the `harness` fixture's params (conftest.py).
"""

import pytest

# The harness's checks (the ledger's) are plain asserts: show their values when they fail, as in a test module.
pytest.register_assert_rewrite("conformance.harness")
