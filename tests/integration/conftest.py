"""Fixtures for end-to-end tests on real Debian 13 hosts (see standin; Debian 12: test_debian12.py).

`testbed` (session): 2 booted hosts + PostgreSQL + moto S3 + outputs.json, torn down at the
end. It FAILS (never skips) when this machine cannot run test hosts, naming what is missing.

Environment knobs:
- MLFLOW_AWS_TESTBED_DIR: state dir (default <repo>/.cache/testhosts-pytest, so a bed
  brought up by hand with the CLI in <repo>/.cache/testhosts is never touched; while such a
  bed is up in the same slot the fixture fails, because a slot's addresses are fixed).
- MLFLOW_AWS_TESTBED_SLOT=N (1..9): run in slot N, beside beds of other slots (another
  bridge, subnet and ports; see standin/slot.py); the default state dir gets the suffix N.
  Tests that need a second bed (test_harness.py, the scale session) take slot N+1.
- MLFLOW_AWS_TESTBED_KEEP=1: leave the bed up after the session; the next session reuses it
  (seconds instead of a fresh boot). `python -m standin down --state-dir DIR` removes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin import Testbed
from standin.slot import from_env
from standin.util import REPO_ROOT
from tests.integration.figures import FIGURES
from tests.integration.stack import Stack, configure_stack, running_bed

# The MLflow client phones home by default: test traffic stays on this machine and the test hosts.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

HOST_COUNT = 2
DEFAULT_DIR = REPO_ROOT / ".cache" / "testhosts-pytest"


def testbed_state_dir() -> Path:
    return Path(os.environ.get("MLFLOW_AWS_TESTBED_DIR") or from_env().with_suffix(DEFAULT_DIR))


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """The running test bed: `.hosts`, `.outputs_file`, `.state_dir`, `.query()`, ..."""
    with running_bed(testbed_state_dir(), HOST_COUNT) as bed:
        yield bed


@pytest.fixture(scope="session")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The test bed's hosts configured by the real playbook (a cold run, then a no-op rerun)."""
    return configure_stack(testbed, tmp_path_factory.mktemp("stack"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every measured figure of the run in one place (figures.figure), passing tests too."""
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
