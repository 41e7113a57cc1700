"""[scale] Three MLflow hosts behind a load balancer (HAProxy standing in for the AWS ALB).

A bed of its own in the next slot (`make test-integration` runs it as a second session,
`-m scale`): three hosts, PostgreSQL and moto as in every bed, and balancer.py's HAProxy on
the test network's gateway. The stack outputs are the bed's with what a scaled Pulumi stack adds:
`url` is the balancer's, `drain_seconds` its health-check time, `ca_certificate` its
certificate. The hosts are first deployed on an older MLflow release, so the last test can
upgrade them, one at a time, under load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra.outputs import check_names
from standin import Host, Slot, Testbed
from standin.playbook import PlaybookRun
from standin.slot import from_env
from standin.util import REPO_ROOT
from tests.integration.balancer import DRAIN_SECONDS, Balancer
from tests.integration.figures import figure
from tests.integration.hammer import Hammer
from tests.integration.stack import (
    PINNED_VERSION,
    READ_USER,
    USERS,
    Stack,
    configure_stack,
    running_bed,
)

pytestmark = [pytest.mark.integration, pytest.mark.scale]

HOSTS = 3
OLD_VERSION = "3.16.1"  # deployed first; the upgrade test moves to the pinned release
API = "/api/2.0/mlflow/experiments/search?max_results=1"
CONFIGURE_PLAY = "PLAY [Configure the MLflow servers]"
RESTART_PLAY = "PLAY [Restart MLflow where needed, one batch of hosts at a time]"


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    # The next slot: runs beside the two-host bed when both are in one session.
    slot = Slot((from_env().number + 1) % 10)
    with running_bed(REPO_ROOT / ".cache" / f"testhosts-scale{slot.suffix}", HOSTS, slot) as bed:
        yield bed


@pytest.fixture(scope="module")
def balancer(bed: Testbed) -> Iterator[Balancer]:
    lb = Balancer(bed.hosts, bed.slot.gateway, bed.state_dir / "balancer").start()
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def scaled(bed: Testbed, balancer: Balancer, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The three hosts configured behind the balancer on the older release (cold, then rerun)."""
    balanced = {  # what a scaled stack exports (infra/outputs.py)
        "url": balancer.url,
        "drain_seconds": DRAIN_SECONDS,
        "ca_certificate": balancer.certificate.read_text(),
    }
    outputs_file = bed.state_dir / "outputs-balanced.json"
    outputs_file.write_text(json.dumps(check_names(bed.outputs() | balanced)))
    work = tmp_path_factory.mktemp("scaled")
    (work / "old.yml").write_text(f"mlflow_version: {OLD_VERSION}\n")
    # No reader: the read-route map is derived from the pinned release, not the older one.
    writers = [user for user in USERS if user != READ_USER]
    return configure_stack(bed, work, outputs_file, ("-e", f"@{work / 'old.yml'}"), writers)


def through(stack: Stack, balancer: Balancer, user: str = "team", **kwargs) -> requests.Response:
    auth = (user, kwargs.pop("password", None) or stack.password(user))
    return requests.get(
        balancer.url + API, auth=auth, verify=balancer.certificate, timeout=30, **kwargs
    )


def configure_plays(run: PlaybookRun) -> int:
    return run.output.count(CONFIGURE_PLAY)


def restart_batches(run: PlaybookRun) -> int:
    """Batches of the restart play: Ansible prints its banner once per batch, and once followed
    by "skipping: no hosts matched" when no host must restart (not a batch)."""
    banner = re.escape(RESTART_PLAY) + r" \**\n+(?!\n|skipping: no hosts matched)"
    return len(re.findall(banner, run.output))


def mlflow_pid(host: Host) -> str:
    return host.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout.strip()


def drained_hosts(balancer: Balancer, since: int) -> Counter[str]:
    """Hosts HAProxy took out because /health answered 503 (a drain, not a crash)."""
    text = balancer.log.read_text()[since:]
    # Each event is logged twice (with and without a "[WARNING]" prefix): count the plain lines.
    pattern = r"^Server mlflow/(\S+) is DOWN, reason: Layer7 wrong status, code: 503"
    return Counter(re.findall(pattern, text, flags=re.MULTILINE))


def test_first_deploy_configures_every_host_at_once_then_restarts_none(scaled: Stack) -> None:
    assert configure_plays(scaled.cold) == 1  # all three hosts at once
    assert restart_batches(scaled.cold) == 1  # nothing served yet: all three started at once
    # Serving, nothing to change: one pass over all hosts at once, no host restarts.
    assert configure_plays(scaled.rerun) == 1
    assert restart_batches(scaled.rerun) == 0
    assert scaled.rerun.changed() == {h.name: 0 for h in scaled.bed.hosts}
    cold, rerun = scaled.cold.seconds, scaled.rerun.seconds
    figure(f"cold deploy of {HOSTS} hosts {cold:.0f} s, no-op rerun {rerun:.0f} s")


def test_requests_spread_over_every_host(scaled: Stack, balancer: Balancer) -> None:
    served = Counter()
    for _ in range(30):
        response = through(scaled, balancer)
        assert response.status_code == 200
        served[response.headers["X-Served-By"]] += 1
    figure(f"30 requests through the balancer: {dict(served)}")
    assert set(served) == {h.name for h in scaled.bed.hosts}
    assert through(scaled, balancer, password="not-the-password-at-all").status_code == 401


def test_stopped_host_costs_no_request_once_the_health_check_drops_it(
    scaled: Stack, balancer: Balancer
) -> None:
    host = scaled.bed.hosts[2]
    try:
        host.stop()
        dropped = balancer.wait_for(host, "DOWN", 30)
        with Hammer(
            balancer.url + API, ("team", scaled.password("team")), balancer.certificate
        ) as hammer:
            for _ in range(50):
                through(scaled, balancer)  # meanwhile, from a second client too
        figure(f"{host.name} stopped: dropped after {dropped:.1f} s; then {hammer.ok} requests, "
              f"served by {dict(hammer.served_by)}")  # fmt: skip
        assert hammer.failures == []
        assert hammer.ok > 20
        assert host.name not in hammer.served_by
    finally:
        scaled.bed.start_host(host)
        balancer.wait_for(host, "UP", 180)


def test_rolling_rotation_drops_no_request(scaled: Stack, balancer: Balancer) -> None:
    old = scaled.password("alice")
    pids = {host.name: mlflow_pid(host) for host in scaled.bed.hosts}
    (scaled.stack_dir / "users" / "alice.password").unlink()  # what `make rotate USER=alice` does
    with Hammer(
        balancer.url + API, ("team", scaled.password("team")), balancer.certificate
    ) as hammer:
        rotation = scaled.configure(echo=False).check()
    new = scaled.password("alice")
    figure(f"rolling rotation {rotation.seconds:.0f} s: {hammer.ok} requests through the "
          f"balancer, {hammer.resent} resent, served by {dict(hammer.served_by)}")  # fmt: skip
    assert hammer.failures == []
    assert hammer.ok > 20
    # A password change reloads nginx (graceful) on every host at once; MLflow keeps running.
    assert configure_plays(rotation) == 1
    assert restart_batches(rotation) == 0
    assert {host.name: mlflow_pid(host) for host in scaled.bed.hosts} == pids
    assert sorted(rotation.changed()) == sorted(h.name for h in scaled.bed.hosts)
    assert all(count >= 1 for count in rotation.changed().values())
    # Same credentials on every host: the new password everywhere, the old one nowhere.
    for host in scaled.bed.hosts:
        direct = scaled.url(host, API)
        cert = scaled.cert(host)
        assert requests.get(direct, auth=("alice", new), verify=cert, timeout=10).status_code == 200
        assert requests.get(direct, auth=("alice", old), verify=cert, timeout=10).status_code == 401
    answers = {through(scaled, balancer, "alice").status_code for _ in range(9)}
    assert answers == {200}


def test_rolling_upgrade_migrates_once_and_drops_no_request(
    scaled: Stack, balancer: Balancer
) -> None:
    revision_before = scaled.bed.query("SELECT version_num FROM alembic_version")[0][0]
    backups_before = set(scaled.bed.list_objects("backups/"))
    log_start = balancer.log.stat().st_size
    scaled.extra = ()  # the pinned release from now on
    with Hammer(
        balancer.url + API, ("team", scaled.password("team")), balancer.certificate
    ) as hammer:
        upgrade = scaled.configure(echo=False).check()
    output = upgrade.output
    figure(f"rolling upgrade {OLD_VERSION} -> {PINNED_VERSION}, {HOSTS} hosts, "
          f"{upgrade.seconds:.0f} s: {hammer.ok} requests through the balancer, {hammer.resent} "
          f"resent, {len(hammer.failures)} failed; drained "
          f"{dict(drained_hosts(balancer, log_start))}")  # fmt: skip
    assert hammer.failures == []
    # The new release staged on every host at once, then restarts one host at a time.
    assert configure_plays(upgrade) == 1
    assert restart_batches(upgrade) == HOSTS
    installed = re.findall(r"TASK \[mlflow : Install MLflow.*\*+\n(?:changed: .*\n)+", output)
    assert len(installed) == 1, installed
    assert installed[0].count("changed: ") == HOSTS, installed
    # One migration (and one backup), before the first host restarts on the new release.
    migrations = re.findall(r"TASK \[mlflow : Upgrade the database schema.*\*+\nchanged: ", output)
    assert len(migrations) == 1
    first_restart = output.index("TASK [systemd : Restart MLflow]")
    assert output.index("TASK [mlflow : Install MLflow") < first_restart
    assert output.index("TASK [mlflow : Upgrade the database schema") < first_restart
    assert len(set(scaled.bed.list_objects("backups/")) - backups_before) == 1
    assert scaled.bed.query("SELECT version_num FROM alembic_version")[0][0] != revision_before
    # Each host was drained (health check 503) before its restart, one after the other.
    assert drained_hosts(balancer, log_start) == {h.name: 1 for h in scaled.bed.hosts}
    for host in scaled.bed.hosts:
        assert scaled.get(host, "/version").text.strip() == PINNED_VERSION
    assert scaled.configure(echo=False).check().changed() == {h.name: 0 for h in scaled.bed.hosts}


def test_credentials_pin_the_balancers_certificate(scaled: Stack, balancer: Balancer) -> None:
    """`make credentials` behind a load balancer: its URL and its certificate."""
    env = os.environ | {
        "MLFLOW_AWS_OUTPUTS_FILE": str(scaled.outputs_file),
        "MLFLOW_AWS_CREDENTIALS_DIR": str(scaled.credentials_dir),
    }
    out = subprocess.run(
        [sys.executable, "-m", "inventory_plugin.credentials", "--stack", "e2e"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    values = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines()
                  if line.startswith("export "))  # fmt: skip
    assert values["MLFLOW_TRACKING_URI"] == balancer.url
    pinned = Path(values["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    assert pinned.read_text() == balancer.certificate.read_text()
