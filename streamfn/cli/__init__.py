"""The command line: `streamfn run`, `status`, `produce`, `redrive`; loading pipeline files; how a run reports."""

from streamfn.cli.commands import main

__all__ = ["main"]
