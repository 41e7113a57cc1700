"""First boot, on the session's configured stack: `make configure` right after `make infra` meets
a host that is still booting, or a package manager holding the dpkg lock, or a host that never
answers (a wrong sshAllowedCidrs). The first two must succeed; the last must say so in one line,
within the bound."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from standin import Host
from standin.playbook import PlaybookRun, run_playbook
from tests.integration.figures import figure
from tests.integration.stack import STACK, Stack, wait_serving

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
    # The bound, plus Ansible's start and the validation play (107 s in all on a loaded 2-core
    # machine, load average 20): far below the default bound of 300 s it stands in for.
    assert run.seconds < bound + 150, run.output[-2000:]
    figure(f"never-answering host reported after {run.seconds:.0f} s (bound {bound} s)")


def test_configure_waits_for_a_host_that_is_still_booting(stack: Stack, second_host: Host) -> None:
    second_host.stop()
    result: list[PlaybookRun] = []
    # On the booting host only (--limit): the other host's pass would prove nothing more.
    limited = partial(stack.run_playbook, "--limit", second_host.name, echo=False)
    playbook = threading.Thread(target=lambda: result.append(limited()))

    playbook.start()
    time.sleep(15)  # the playbook is waiting for SSH by now
    assert playbook.is_alive(), "the playbook did not wait for the stopped host"
    boot_seconds = stack.bed.start_host(second_host)
    playbook.join(timeout=900)

    run = result[0]
    run.check()
    assert run.changed() == {second_host.name: 0}
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

    run = stack.run_playbook("--limit", host.name, echo=False)  # the host with the lock held

    run.check()
    waited = [line for line in run.output.splitlines() if "FAILED - RETRYING" in line]
    assert waited, "the wait for the dpkg lock was not shown"
    assert "dpkg lock" in waited[0]
    assert time.monotonic() - started >= HOLD_SECONDS - 10
    status = host.run(["dpkg-query", "-W", "-f=${db:Status-Status}", MISSING_PACKAGE])
    assert status.stdout == "installed"
    figure(f"configure with the dpkg lock held {HOLD_SECONDS} s: {run.seconds:.0f} s")


# ----- the first connection is verified (stack output ssh_host_key, pinned by the inventory) ---


def test_a_host_presenting_another_key_is_refused_before_anything_runs(
    stack: Stack, second_host: Host, tmp_path: Path
) -> None:
    outputs = json.loads(stack.bed.outputs_file.read_text())
    assert outputs["hosts"][1]["ssh_host_key"] == second_host.host_public_key()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    outputs["hosts"][1]["ssh_host_key"] = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    forged = tmp_path / "outputs.json"
    forged.write_text(json.dumps(outputs))
    journal_before = second_host.run(["journalctl", "-u", "ssh", "-o", "cat"]).stdout

    run = run_playbook(
        forged,
        stack.credentials_dir,
        STACK,
        ["-e", f"@{stack.users_file}", "--limit", second_host.name],
        echo=False,
    )

    assert run.returncode != 0
    assert (
        f"{second_host.name} ({second_host.ip}) presents an SSH host key other than the one the "
        "stack made for it, so nothing was run there"
    ) in " ".join(run.output.split())
    # Not even a login: sshd saw no accepted session since.
    journal = second_host.run(["journalctl", "-u", "ssh", "-o", "cat"]).stdout
    assert "Accepted publickey" not in journal[len(journal_before) :]


def test_a_replaced_instance_gets_its_new_key_pinned(stack: Stack, second_host: Host) -> None:
    """New host key (as a replaced instance has) and new outputs: configure just works."""
    second_host.run(
        "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && "
        "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl reload ssh"
    )
    second_host._record_host_key()  # the harness's own ssh
    stack.bed.write_outputs()  # what `make infra` exports for the replaced instance

    run = stack.run_playbook("--limit", second_host.name, echo=False)

    run.check()
    pinned = (stack.stack_dir / "pinned_host_keys").read_text()
    assert f"{second_host.ip} {second_host.host_public_key()}\n" in pinned
