"""A configured test stack: the harness's hosts after the real playbook ran on them.

Shared by the end-to-end tests and the examples' tests through the `stack` fixture (conftest.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from standin import Host, Testbed
from standin.playbook import PlaybookRun, run_playbook
from tests.integration.figures import figure

USERS = ["team", "alice", "viewer"]
# Roles other than the default (write): viewer may only read (test_read_only.py).
ROLES = {"viewer": "read"}
STACK = "e2e"


@dataclass
class Stack:
    """A configured test stack: the bed, where its credentials live, and the playbook runs."""

    bed: Testbed
    credentials_dir: Path
    users_file: Path
    cold: PlaybookRun
    rerun: PlaybookRun
    # When the bed's hosts were booted (state.json `started_at`): a bed taken down and brought
    # up again (test_harness.py does) has new, unconfigured hosts.
    bed_started_at: float | None = None
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


def configure_stack(
    testbed: Testbed, work: Path, outputs_file: Path | None = None, extra: tuple[str, ...] = ()
) -> Stack:
    """The hosts configured by a cold run, then a second run (which must change nothing)."""
    credentials_dir = work / "credentials"
    users_file = work / "users.json"
    users = [{"name": user, **({"role": ROLES[user]} if user in ROLES else {})} for user in USERS]
    users_file.write_text(json.dumps({"mlflow_users": users}))
    configured = Stack(testbed, credentials_dir, users_file, None, None)  # type: ignore[arg-type]
    configured.outputs_file, configured.extra = outputs_file, extra
    configured.bed_started_at = testbed.state().get("started_at")
    configured.cold = configured.configure().check()
    configured.rerun = configured.configure().check()
    figure(f"cold converge {configured.cold.seconds:.0f} s, rerun {configured.rerun.seconds:.0f} s")
    return configured


def reconfigure_if_recreated(stack: Stack, work: Path) -> bool:
    """Configure the bed's hosts again, in place, if the bed was brought up anew since.

    In place: module-scoped fixtures keep their reference to the session's Stack. New hosts
    have new SSH host keys, so the credentials (known_hosts, passwords) start afresh in `work`.
    """
    started_at = stack.bed.state().get("started_at")
    if started_at == stack.bed_started_at:
        return False
    fresh = configure_stack(stack.bed, work)
    for name in ("credentials_dir", "users_file", "cold", "rerun", "bed_started_at"):
        setattr(stack, name, getattr(fresh, name))
    return True


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
