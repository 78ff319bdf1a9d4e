"""Failures: the failure model (conditions, destinations, partial batch responses), recovery, and their logs."""
