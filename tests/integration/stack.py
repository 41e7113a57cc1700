"""Test beds and configured test stacks (a bed's hosts after the real playbook ran on them).

`running_bed` is behind every bed fixture (conftest.py's `testbed`, test_scale.py's `bed`);
`configure_stack` behind `stack`, shared by the end-to-end and the examples' tests.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from standin import HarnessError, Host, Slot, Testbed
from standin.deps import missing_prerequisites
from standin.playbook import PlaybookRun, run_playbook
from standin.util import REPO_ROOT
from tests.integration.figures import figure

USERS = ["team", "alice", "scraper", "viewer"]
# Roles other than the default (write): scraper may read /metrics and nothing else
# (test_metrics.py), viewer may only read (test_read_only.py).
METRICS_USER = "scraper"
READ_USER = "viewer"
ROLES = {METRICS_USER: "metrics", READ_USER: "read"}
STACK = "e2e"
# The release the mlflow role installs: its default.
MLFLOW_DEFAULTS = REPO_ROOT / "ansible" / "roles" / "mlflow" / "defaults" / "main.yml"
PINNED_VERSION = yaml.safe_load(MLFLOW_DEFAULTS.read_text())["mlflow_version"]


@contextmanager
def running_bed(state_dir: Path, hosts: int, slot: Slot | None = None) -> Iterator[Testbed]:
    """A bed of `hosts` fresh hosts, taken down afterwards unless MLFLOW_AWS_TESTBED_KEEP=1.

    It FAILS (never skips) when this machine cannot run test hosts, naming what is missing.
    """
    problems = missing_prerequisites()
    if problems:
        pytest.fail("integration tests need: " + "; ".join(problems), pytrace=False)
    bed = Testbed(state_dir, slot)
    try:
        bed.up(hosts, replace=True)
    except HarnessError as error:
        pytest.fail(f"test bed did not come up: {error}", pytrace=False)
    yield bed
    if os.environ.get("MLFLOW_AWS_TESTBED_KEEP") != "1":
        bed.down()


@dataclass
class Stack:
    """A configured test stack: the bed, where its credentials live, and the playbook runs."""

    bed: Testbed
    credentials_dir: Path
    users_file: Path
    cold: PlaybookRun
    rerun: PlaybookRun
    # Outputs other than the bed's own (e.g. a load balancer's url in front of the hosts).
    outputs_file: Path | None = None
    # Extra ansible-playbook arguments of every run (e.g. another mlflow_version).
    extra: tuple[str, ...] = ()

    @property
    def stack_dir(self) -> Path:
        return self.credentials_dir / STACK

    def password(self, user: str) -> str:
        return (self.stack_dir / "users" / f"{user}.password").read_text().strip()

    def cert(self, host: Host) -> Path:
        return self.stack_dir / f"{host.name}.crt"

    def url(self, host: Host, path: str = "/") -> str:
        return f"https://{host.ip}{path}"

    def get(self, host: Host, path: str, user: str | None = "team", **kwargs) -> requests.Response:
        auth = (user, self.password(user)) if user else None
        return requests.get(
            self.url(host, path), auth=auth, verify=self.cert(host), timeout=30, **kwargs
        )

    def configure(self, echo: bool = True) -> PlaybookRun:
        return self.run_playbook(echo=echo)

    def run_playbook(self, *extra: str, echo: bool = True) -> PlaybookRun:
        return run_playbook(
            self.outputs_file or self.bed.outputs_file,
            self.credentials_dir,
            STACK,
            ["-e", f"@{self.users_file}", *self.extra, *extra],
            echo=echo,
        )


def write_users(path: Path, names: list[str]) -> Path:
    """An extra-vars file with the mlflow_users entries of `names` (roles from ROLES)."""
    users = [{"name": user, **({"role": ROLES[user]} if user in ROLES else {})} for user in names]
    path.write_text(json.dumps({"mlflow_users": users}))
    return path


def without_readers(work: Path) -> Path:
    """The users minus the reader: for deploying an MLflow release other than the pinned one,
    which the playbook refuses while a reader's route map comes from another release."""
    return write_users(work / "users-without-readers.json", [u for u in USERS if u != READ_USER])


def configure_stack(
    testbed: Testbed,
    work: Path,
    outputs_file: Path | None = None,
    extra: tuple[str, ...] = (),
    users: list[str] = USERS,
) -> Stack:
    """The hosts configured by a cold run, then a second run (which must change nothing)."""
    credentials_dir = work / "credentials"
    users_file = write_users(work / "users.json", users)
    configured = Stack(testbed, credentials_dir, users_file, None, None)  # type: ignore[arg-type]
    configured.outputs_file, configured.extra = outputs_file, extra
    configured.cold = configured.configure().check()
    configured.rerun = configured.configure().check()
    figure(f"cold converge {configured.cold.seconds:.0f} s, rerun {configured.rerun.seconds:.0f} s")
    return configured


def wait_serving(stack: Stack, host: Host, timeout: float) -> float:
    """Seconds until an authenticated API call succeeds again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if stack.get(host, "/api/2.0/mlflow/experiments/search?max_results=1").ok:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{host.name} not serving within {timeout} s")


def raw_request(stack: Stack, host: Host, user: str, method: str, target: str) -> tuple[int, str]:
    """One request exactly as spelled (requests and urllib3 would normalise the path)."""
    context = ssl.create_default_context(cafile=str(stack.cert(host)))
    connection = http.client.HTTPSConnection(host.ip, 443, context=context, timeout=30)
    credentials = f"{user}:{stack.password(user)}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    body = '{"max_results": 1}' if method in ("POST", "PUT", "PATCH") else None
    if body:
        headers["Content-Type"] = "application/json"
    connection.request(method, target, body=body, headers=headers)
    response = connection.getresponse()
    text = response.read().decode(errors="replace")
    connection.close()
    return response.status, text
