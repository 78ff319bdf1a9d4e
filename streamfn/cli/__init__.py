"""The command line: `streamfn run`, `status`, `produce`, `redrive`; loading pipeline files; how a run reports."""
