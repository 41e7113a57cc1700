"""pytest wiring for the infra tests; the mocks and helpers live in infra_mocks.py.

`infra_mocks` is imported first: it calls `pulumi.runtime.set_mocks` before the program
(`infra`) is imported anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from infra_mocks import MOCKS, checked_counts, pending_checks
from pulumi.runtime import config as runtime_config


def pytest_configure(config: pytest.Config) -> None:
    # pulumi_aws warns about each of its deprecated classes (s3 *V2, ...) when their module is
    # imported, used or not; test_infra_storage checks the program uses the current names.
    config.addinivalue_line(
        "filterwarnings", "ignore:.*has been deprecated in favor of:DeprecationWarning"
    )


@pytest.fixture(autouse=True)
def _every_check_ran() -> Iterator[None]:
    pending_checks.clear()
    checked_counts.clear()
    yield
    assert not pending_checks, f"checks scheduled but never run: {pending_checks}"
    for seen in checked_counts:
        assert seen == len(MOCKS.resources), (
            f"a check saw {seen} resources but {len(MOCKS.resources)} were registered"
        )


@pytest.fixture
def stack_config() -> Iterator[Callable[[dict[str, str]], None]]:
    """Set this stack's Pulumi config for one test, then clear it."""
    yield runtime_config.set_all_config
    runtime_config.set_all_config({})
