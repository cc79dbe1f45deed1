"""A pytest plugin for the proof's test stage: one JSON line per test outcome, written as each test ends.

Loaded with ``-p perf.pytest_outcomes``; writes to the file named by ``ETSC_PROOF_OUTCOMES`` (nothing when unset),
so the counts survive a run stopped at its time cap. With pytest-xdist the controller receives every worker's
reports (workers write nothing), so one file holds each outcome once.
"""

from __future__ import annotations

import json
import os

OUTCOMES_ENV = "ETSC_PROOF_OUTCOMES"


def outcome_of(report) -> str | None:
    """``passed`` / ``failed`` / ``error`` / ``skipped`` once per test, or None for the phases that add nothing
    (a passing setup or teardown, the call of a test whose setup was skipped)."""
    if report.skipped:
        return "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed" if report.when == "call" else None


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get(OUTCOMES_ENV)
    outcome = outcome_of(report)
    if not path or outcome is None or os.environ.get("PYTEST_XDIST_WORKER"):  # the controller writes it once
        return
    with open(path, "a") as f:
        f.write(json.dumps({"test": report.nodeid, "outcome": outcome, "when": report.when}) + "\n")
