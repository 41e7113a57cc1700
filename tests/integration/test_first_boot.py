"""First boot, on the session's configured stack: `make configure` right after `make infra` meets
a host that is still booting, or a package manager holding the dpkg lock, or a host that never
answers (a wrong sshAllowedCidrs). The first two must succeed; the last must say so in one line,
within the bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from standin import Host
from standin.playbook import PlaybookRun
from tests.integration.figures import figure
from tests.integration.stack import Stack, wait_serving

pytestmark = pytest.mark.integration

HOLD_SECONDS = 90
HOLDER_UNIT = "mlflow-test-dpkg-hold"
MISSING_PACKAGE = "python3-passlib"


@pytest.fixture
def second_host(stack: Stack) -> Iterator[Host]:
    """The second host, running and serving again after the test whatever it did."""
    host = stack.bed.hosts[1]
    yield host
    if not host.is_running():
        stack.bed.start_host(host)
    wait_serving(stack, host, 120)


def test_a_host_that_never_answers_gets_one_clear_line_within_the_bound(
    stack: Stack, second_host: Host
) -> None:
    second_host.stop()
    bound = 15

    run = stack.run_playbook(
        "--limit", second_host.name, "-e", f"mlflow_ssh_wait_timeout={bound}", echo=False
    )

    assert run.returncode != 0
    expected = (
        f"{second_host.name} ({second_host.ip}) did not answer SSH within {bound} s: is it "
        "running (`make infra` creates and starts it), and is this machine's public address in "
        "the stack setting sshAllowedCidrs"
    )
    assert expected in " ".join(run.output.split())
    # The bound, plus Ansible's start and one last connection attempt (ssh timeout 10 s).
    assert run.seconds < bound + 40, run.output[-2000:]
    figure(f"never-answering host reported after {run.seconds:.0f} s (bound {bound} s)")


def test_configure_waits_for_a_host_that_is_still_booting(stack: Stack, second_host: Host) -> None:
    second_host.stop()
    result: list[PlaybookRun] = []
    playbook = threading.Thread(target=lambda: result.append(stack.configure(echo=False)))

    playbook.start()
    time.sleep(15)  # the playbook is waiting for SSH by now
    assert playbook.is_alive(), "the playbook did not wait for the stopped host"
    boot_seconds = stack.bed.start_host(second_host)
    playbook.join(timeout=900)

    run = result[0]
    run.check()
    assert run.changed() == {host.name: 0 for host in stack.bed.hosts}
    assert "answer SSH" in run.output
    figure(
        f"configure started 15 s before the host booted ({boot_seconds:.0f} s): {run.seconds:.0f} s"
    )


@pytest.fixture
def dpkg_lock_held(stack: Stack) -> Iterator[Host]:
    """A package the python role installs is missing on the first host (so the run must install
    it), and another process there holds the dpkg frontend lock for 90 s."""
    host = stack.bed.hosts[0]
    host.run(["apt-get", "remove", "-y", "-qq", MISSING_PACKAGE])
    hold = (
        "import fcntl, os, time; "
        "fd = os.open('/var/lib/dpkg/lock-frontend', os.O_RDWR | os.O_CREAT, 0o640); "
        f"fcntl.lockf(fd, fcntl.LOCK_EX); time.sleep({HOLD_SECONDS})"
    )
    host.run(["systemd-run", f"--unit={HOLDER_UNIT}", "--collect", "python3", "-c", hold])
    time.sleep(1)
    yield host
    host.systemctl("stop", HOLDER_UNIT, check=False)


def test_configure_waits_for_the_dpkg_lock(stack: Stack, dpkg_lock_held: Host) -> None:
    """The run waits for the lock, visibly, then installs the missing package."""
    host = dpkg_lock_held
    started = time.monotonic()

    run = stack.configure(echo=False)

    run.check()
    waited = [line for line in run.output.splitlines() if "FAILED - RETRYING" in line]
    assert waited, "the wait for the dpkg lock was not shown"
    assert "dpkg lock" in waited[0]
    assert time.monotonic() - started >= HOLD_SECONDS - 10
    status = host.run(["dpkg-query", "-W", "-f=${db:Status-Status}", MISSING_PACKAGE])
    assert status.stdout == "installed"
    figure(f"configure with the dpkg lock held {HOLD_SECONDS} s: {run.seconds:.0f} s")
