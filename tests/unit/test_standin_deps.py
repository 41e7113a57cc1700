"""The harness's prerequisite check: pebble must be the release .ci/install-test-deps.sh pins."""

from __future__ import annotations

import subprocess

import pytest

from standin import deps


def test_the_pinned_pebble_is_read_from_the_install_script() -> None:
    assert deps.pinned_pebble_version() == "2.10.0+ds1-2"


@pytest.mark.parametrize(("installed", "missing"), [
    ("2.10.0+ds1-2", []),
    ("2.4.0+ds1-2+b4", ["pebble 2.10.0+ds1-2 (have 2.4.0+ds1-2+b4)"]),
    ("", ["pebble 2.10.0+ds1-2 (have none)"]),
])  # fmt: skip
def test_an_older_pebble_counts_as_missing(
    monkeypatch: pytest.MonkeyPatch, installed: str, missing: list[str]
) -> None:
    """An older pebble puts IP addresses in the CN (certbot fails): the install script must run."""
    monkeypatch.setattr(deps.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")

    def dpkg_query(argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        assert argv[:2] == ["dpkg-query", "-W"]
        assert argv[-1] == "pebble"
        return subprocess.CompletedProcess(argv, 0 if installed else 1, installed, "")

    monkeypatch.setattr(deps, "run", dpkg_query)
    assert deps.missing_commands() == missing
