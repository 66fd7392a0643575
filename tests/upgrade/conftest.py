"""Fixtures of the rolling-upgrade tests (DESIGN.md section 8, "Versions and rolling upgrades").

``release_0_1``: a virtualenv holding eventbus 0.1 and its Kafka and RabbitMQ adapters, built
once per test session from the repository's own history (`upgrade_release`); the time it took
is reported at the end of the run, in the "rolling upgrade" section with the ledgers.

The broker endpoints (``kafka_url``, ``amqp_url``) come from tests/conftest.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# The reliability scenarios' pure ledger functions (per-key order, overlaps) and broker cleanup
# are reused (tests/reliability/rel_ledger.py, rel_harness.py).
sys.path.append(str(Path(__file__).resolve().parents[1] / "reliability"))

from upgrade_release import OldRelease, build_old_release

_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def release_0_1(
    tmp_path_factory: pytest.TempPathFactory, upgrade_report: Callable[[str], None]
) -> OldRelease:
    """eventbus 0.1 with both adapters in a virtualenv of its own, built once per session."""
    old = build_old_release(tmp_path_factory.mktemp("eventbus-0.1"))
    assert old.version.startswith("0.1."), old
    upgrade_report(
        f"eventbus {old.version} venv (commit {old.commit[:10]}) built in {old.build_seconds:.1f}s"
    )
    return old


@pytest.fixture(scope="session")
def upgrade_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Lines for the "rolling upgrade" section at the end of the run."""

    def add(line: str) -> None:
        request.config.stash.setdefault(_REPORT, []).append(line)

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("rolling upgrade")
        for line in lines:
            terminalreporter.write_line(line)
