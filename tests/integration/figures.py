"""Measured figures of the integration tests (times, counts, scores), repeated at the end of the
run by conftest.py so a CI log shows them all in one place, even for passing tests."""

from __future__ import annotations

import os

FIGURES: list[str] = []


def figure(text: str) -> None:
    """Print a measured figure now and again in the run's summary, with the test's name."""
    print(f"\n{text}")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1]
    FIGURES.append(f"{test}: {text}" if test else text)
