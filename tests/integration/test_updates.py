"""Security updates on the configured hosts (role unattended_upgrades), on the session's stack.

The hosts run Debian 13, the default `os`: unattended-upgrades takes the security suite only,
never reboots, needrestart never restarts a service itself, and the next playbook run restarts
MLflow and nginx when an update left them on a replaced library.
"""

from __future__ import annotations

import re

import pytest

from standin import Host
from standin.rootfs import SUITES
from tests.integration.figures import figure
from tests.integration.stack import Stack, wait_serving

pytestmark = pytest.mark.integration

NEEDRESTART = ["needrestart", "-b", "-r", "l", "-l"]


def security_pattern(stack: Stack) -> str:
    suite = SUITES[stack.bed.debian]
    return f"origin=Debian,codename={suite}-security,label=Debian-Security"


def test_unattended_upgrades_allows_the_security_suite_only(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    dump = host.run(["apt-config", "dump"]).stdout
    patterns = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    # The configuration names the release by unattended-upgrades' own variable (it survives a
    # release upgrade); the dry run below shows it expanded to this host's release.
    configured = [p.replace("${distro_codename}", SUITES[stack.bed.debian]) for p in patterns]
    assert configured == [security_pattern(stack)], patterns
    assert not re.search(r"^Unattended-Upgrade::Allowed-Origins:: ", dump, re.M)
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'APT::Periodic::Update-Package-Lists "1";' in dump

    # What unattended-upgrades itself decides (it may find nothing to install on a fresh host).
    dry = host.run(["unattended-upgrade", "--dry-run", "-d"], timeout=300)
    output = dry.stdout + dry.stderr
    allowed = re.search(r"^Allowed origins are: (.*)$", output, re.M)
    assert allowed, output[-2000:]
    assert allowed.group(1).strip() == security_pattern(stack)


def test_daily_timers_on_and_no_automatic_restarts_or_reboots(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.systemctl("is-enabled", timer).stdout.strip() == "enabled"
        assert host.systemctl("is-active", timer).stdout.strip() == "active"
    config = host.run(["cat", "/etc/needrestart/conf.d/50-mlflow-aws.conf"]).stdout
    assert "$nrconf{restart} = 'l';" in config
    # needrestart's effective mode: list only (it prints the services, restarts none).
    effective = host.run(["needrestart", "-b", "-l"]).stdout
    assert "NEEDRESTART-VER:" in effective


def main_pid(host: Host, unit: str) -> str:
    return host.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()


def test_library_update_restarts_mlflow_and_nginx_on_the_next_run_only(stack: Stack) -> None:
    """An update replaces libc (as a security update does): nothing restarts by itself; the
    next run finds MLflow and nginx on the old library and restarts them (drained handler)."""
    host = stack.bed.hosts[1]
    before = {unit: main_pid(host, unit) for unit in ("mlflow", "nginx")}
    maps = host.run(["cat", f"/proc/{before['mlflow']}/maps"]).stdout
    libc = next(line.split()[-1] for line in maps.splitlines() if "/libc.so.6" in line)
    # What dpkg does when it upgrades a package: write the new file aside, rename it over.
    host.run(f"cp -a {libc} {libc}.dpkg-new && mv {libc}.dpkg-new {libc}")
    pending = host.run(NEEDRESTART).stdout
    assert "NEEDRESTART-SVC: mlflow.service" in pending
    assert "NEEDRESTART-SVC: nginx.service" in pending
    # List-only: still the same processes.
    assert {unit: main_pid(host, unit) for unit in before} == before

    run = stack.run_playbook("--limit", host.name, echo=False).check()  # the updated host
    assert run.changed()[host.name] >= 1
    after = {unit: main_pid(host, unit) for unit in before}
    assert after["mlflow"] != before["mlflow"]
    assert after["nginx"] != before["nginx"]
    assert "Restart the other units that run replaced libraries" in run.output
    remaining = host.run(NEEDRESTART).stdout
    assert "mlflow.service" not in remaining
    assert "nginx.service" not in remaining
    figure(f"pending-restart run {run.seconds:.0f} s")
    wait_serving(stack, host, 60)
