"""Fixtures for end-to-end tests on real Debian 13 hosts (see standin; Debian 12: test_debian12.py).

`testbed` (session): 2 booted hosts + PostgreSQL + moto S3 + outputs.json, torn down at the
end. It FAILS (never skips) when this machine cannot run test hosts, naming what is missing.

Environment knobs:
- MLFLOW_AWS_TESTBED_DIR: state dir (default <repo>/.cache/testhosts-pytest, so a bed
  brought up by hand with the CLI in <repo>/.cache/testhosts is never touched; while such a
  bed is up in the same slot the fixture fails, because a slot's addresses are fixed).
- MLFLOW_AWS_TESTBED_SLOT=N (1..9): run in slot N, beside beds of other slots (another
  bridge, subnet and ports; see harness/slot.py); the default state dir gets the suffix N.
- MLFLOW_AWS_TESTBED_KEEP=1: leave the bed up after the session; the next session reuses it
  (seconds instead of a fresh boot). `python -m standin down --state-dir
  DIR` removes it.
Note: test_harness.py::test_down_leaves_nothing_behind takes the bed down and brings it up
again with fresh hosts; tests must not rely on host state from another test module. The
harness's tests therefore run last (a fresh configure costs minutes), and should a test using
`stack` still run after a re-created bed, the stack is configured again first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin import HarnessError, Testbed
from standin.deps import missing_prerequisites
from standin.slot import from_env
from standin.util import REPO_ROOT
from tests.integration.figures import FIGURES
from tests.integration.stack import Stack, configure_stack, reconfigure_if_recreated

# The MLflow client phones home by default: test traffic stays on this machine and the test hosts.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

HOST_COUNT = 2
DEFAULT_DIR = REPO_ROOT / ".cache" / "testhosts-pytest"


def testbed_state_dir() -> Path:
    return Path(os.environ.get("MLFLOW_AWS_TESTBED_DIR") or from_env().with_suffix(DEFAULT_DIR))


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """The running test bed: `.hosts`, `.outputs_file`, `.state_dir`, `.query()`, ..."""
    problems = missing_prerequisites()
    if problems:
        pytest.fail("integration tests need: " + "; ".join(problems), pytrace=False)
    bed = Testbed(testbed_state_dir())
    try:
        bed.up(HOST_COUNT, replace=True)
    except HarnessError as error:
        pytest.fail(f"test bed did not come up: {error}", pytrace=False)
    yield bed
    if os.environ.get("MLFLOW_AWS_TESTBED_KEEP") != "1":
        bed.down()


@pytest.fixture(scope="session")
def stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The test bed's hosts configured by the real playbook (a cold run, then a no-op rerun)."""
    return configure_stack(testbed, tmp_path_factory.mktemp("stack"))


@pytest.fixture(autouse=True)
def _stack_follows_the_bed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Before a test that uses `stack`: reconfigure if the bed was brought up anew."""
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        reconfigure_if_recreated(stack, tmp_path_factory.mktemp("stack"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every measured figure of the run in one place (figures.figure), passing tests too."""
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_harness.py last: its final test re-creates the bed, unconfigured."""
    harness = [item for item in items if item.path.name == "test_harness.py"]
    others = [item for item in items if item.path.name != "test_harness.py"]
    items[:] = others + harness
