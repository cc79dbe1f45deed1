"""The etsc_triton benchmark harness: ``python -m perf`` (see perf/README.md)."""
