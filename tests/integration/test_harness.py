"""The test harness itself: real hosts that behave like fresh Debian 13 EC2 instances."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import psycopg2
import pytest

from standin import HarnessError, Host, Slot, Testbed, deps, network
from standin.network import IP_FORWARD
from standin.slot import other_slots
from standin.util import REPO_ROOT

pytestmark = pytest.mark.integration


def reach_script(slot: Slot) -> str:
    """Python for a host: connect to PostgreSQL and moto on its slot's gateway."""
    return f"""
import socket
for port in ({slot.pg_port}, {slot.s3_port}):
    socket.create_connection(("{slot.gateway}", port), timeout=5).close()
print("ok")
"""


def test_hosts_answer_ssh_as_admin_with_passwordless_sudo(testbed: Testbed) -> None:
    for host in testbed.hosts:
        assert host.ssh("id -un").stdout.strip() == "admin"
        assert host.ssh("sudo -n id -u").stdout.strip() == "0"


def test_ssh_refuses_passwords(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    argv = host.ssh_argv()
    no_key = [*argv[:1], "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes"]
    result = subprocess.run([*no_key, *argv[3:], "true"], capture_output=True, text=True)
    assert result.returncode == 255
    assert "publickey" in result.stderr
    sshd = host.run(["sshd", "-T"]).stdout
    assert "passwordauthentication no" in sshd
    assert "permitrootlogin no" in sshd


def test_systemd_runs_as_pid_1(testbed: Testbed) -> None:
    for host in testbed.hosts:
        assert host.run(["ps", "-o", "comm=", "-p", "1"]).stdout.strip() == "systemd"
        assert host.system_state() == "running"


def test_hosts_have_their_own_identity(testbed: Testbed) -> None:
    def identity(host: Host) -> tuple[str, str, str]:
        return (
            host.read_file("/etc/hostname").strip(),
            host.read_file("/etc/machine-id").strip(),
            host.read_file("/etc/ssh/ssh_host_ed25519_key.pub").split()[1],
        )

    names, machine_ids, host_keys = zip(*(identity(h) for h in testbed.hosts), strict=True)
    assert list(names) == [h.name for h in testbed.hosts]
    assert len(set(machine_ids)) == len(set(host_keys)) == len(testbed.hosts)


def test_hosts_reach_postgres_and_moto_on_the_bridge(testbed: Testbed) -> None:
    for host in testbed.hosts:
        assert host.ssh(["python3", "-c", reach_script(testbed.slot)]).stdout.strip() == "ok"


def test_hosts_reach_each_other_by_name(testbed: Testbed) -> None:
    first, second = testbed.hosts[:2]
    probe = f"import socket; socket.create_connection(('{second.dns_name}', 22), 5); print('ok')"
    assert first.ssh(["python3", "-c", probe]).stdout.strip() == "ok"


def test_hosts_reach_package_mirrors_and_trust_the_machine_cas(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    host.run(["apt-get", "update", "-qq"], timeout=180)
    status = host.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://pypi.org/simple/pip/"],
        timeout=60,
    )
    assert status.stdout == "200"
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in host.read_file("/etc/pip.conf")


def test_outputs_file_has_the_stack_outputs_shape(testbed: Testbed) -> None:
    assert stat.S_IMODE(testbed.outputs_file.stat().st_mode) == 0o600
    outputs = json.loads(testbed.outputs_file.read_text())
    # Each host's pinned SSH host key is the one the host presents (read over SSH, not from the
    # harness's own copy).
    presented = {
        h.name: " ".join(h.ssh(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2])
        for h in testbed.hosts
    }
    assert outputs["hosts"] == [
        {
            "name": h.name,
            "public_ip": h.ip,
            "private_ip": h.ip,
            "public_dns": f"{h.name}.test",
            "ssh_host_key": presented[h.name],
        }
        for h in testbed.hosts
    ]
    assert all(key.startswith("ssh-ed25519 AAAA") for key in presented.values())
    assert outputs["ssh_user"] == "admin"
    assert outputs["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert outputs["db_dsn"].startswith("postgresql://mlflow:")
    slot = testbed.slot  # slot 0: 10.77.0.1:55432, hosts 10.77.0.11..., moto :55900
    assert outputs["db_dsn"].endswith(f"@{slot.gateway}:{slot.pg_port}/mlflow")
    assert outputs["artifacts_destination"] == "s3://mlflow-artifacts-test/mlflow-artifacts"
    assert outputs["region"] == "us-east-1"
    assert outputs["url"] == f"https://{slot.host_ip(1)}"
    assert outputs["s3_endpoint_url"] == f"http://{slot.gateway}:{slot.s3_port}"
    assert outputs["s3_access_key_id"] == outputs["s3_secret_access_key"] == "testing"


def test_database_answers_and_survives_an_outage(testbed: Testbed) -> None:
    assert testbed.query("SELECT current_user, current_database()") == [("mlflow", "mlflow")]
    testbed.postgres.stop()
    try:
        with pytest.raises(psycopg2.OperationalError):
            testbed.query("SELECT 1")
    finally:
        testbed.postgres.start()
    assert testbed.query("SELECT %s::int", (7,)) == [(7,)]


def test_hosts_run_debian_13_and_the_database_postgresql_17(testbed: Testbed) -> None:
    """The default `os` and RDS's default major version, as a user gets them."""
    release = testbed.hosts[0].run(["cat", "/etc/os-release"]).stdout
    assert 'VERSION_ID="13"' in release
    assert "trixie" in release
    assert testbed.query("SHOW server_version_num")[0][0].startswith("17")


def test_database_refuses_a_wrong_password(testbed: Testbed) -> None:
    wrong = testbed.postgres.dsn("127.0.0.1").replace(testbed.postgres.password, "wrong")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong, connect_timeout=5).close()


def test_bucket_lists_what_was_put(testbed: Testbed) -> None:
    client = testbed.s3.client()
    client.put_object(Bucket=testbed.s3.bucket, Key="mlflow-artifacts/harness/a.txt", Body=b"a")
    try:
        assert testbed.list_objects("mlflow-artifacts/harness/") == [
            "mlflow-artifacts/harness/a.txt"
        ]
    finally:
        client.delete_object(Bucket=testbed.s3.bucket, Key="mlflow-artifacts/harness/a.txt")


def test_reboot_brings_ssh_back_with_the_state(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    host.write_file("/var/tmp/before-reboot", "kept\n")
    machine_id = host.read_file("/etc/machine-id")
    seconds = host.reboot()
    assert seconds < 30
    assert host.ssh("cat /var/tmp/before-reboot").stdout == "kept\n"
    assert host.read_file("/etc/machine-id") == machine_id
    assert host.system_state() == "running"


def test_reboot_from_inside_over_ssh(testbed: Testbed) -> None:
    """What Ansible's reboot module does: the host comes back by itself."""
    host = testbed.hosts[1]
    leader = host.leader_pid()
    host.ssh("sudo systemctl reboot", check=False)
    host.wait_rebooted(leader, 60)
    assert host.ssh("cat /proc/1/comm").stdout.strip() == "systemd"


def test_stop_and_start_keep_the_state(testbed: Testbed) -> None:
    host = testbed.hosts[1]
    host.write_file("/etc/harness-marker", "still here\n")
    host.stop()
    assert not host.is_running()
    with pytest.raises(HarnessError, match="not running"):
        host.run(["true"])
    testbed.start_host(host)
    assert host.read_file("/etc/harness-marker") == "still here\n"


def test_kill_a_process_inside(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    # Type=exec: systemd-run returns once sleep runs, not while it is still being forked.
    host.run(["systemd-run", "--unit=harness-sleep", "--service-type=exec", "sleep", "600"])
    assert host.kill("sleep", "KILL") == 1
    host.run(["sh", "-c", "while systemctl is-active -q harness-sleep; do sleep 0.1; done"])
    host.run(["systemctl", "reset-failed", "harness-sleep"], check=False)


def test_up_again_reuses_a_healthy_bed_and_refuses_another_size(testbed: Testbed) -> None:
    again = Testbed(testbed.state_dir).up(len(testbed.hosts))
    assert [h.name for h in again.hosts] == [h.name for h in testbed.hosts]
    with pytest.raises(HarnessError, match="down"):
        Testbed(testbed.state_dir).up(len(testbed.hosts) + 1)


def beside_slot(testbed: Testbed) -> Slot:
    """The slot after the shared bed's, as the scale session's (a session of its own)."""
    return Slot((testbed.slot.number + 1) % 10)


def test_a_bed_in_another_slot_runs_beside(testbed: Testbed) -> None:
    """A second bed (1 host) in another slot: up, SSH, its own services, down, nothing left."""
    slot = beside_slot(testbed)
    beside = Testbed(REPO_ROOT / ".cache" / f"testhosts-pytest-beside{slot.number}", slot)
    try:
        beside.up(1, replace=True)
        host = beside.hosts[0]
        assert (host.name, host.ip) == (f"mlflow-t{slot.number}-1", f"10.77.{slot.number}.11")
        host.ssh(["true"])
        assert host.ssh(["python3", "-c", reach_script(slot)]).stdout.strip() == "ok"
        assert beside.query("SELECT 1") == [(1,)]
    finally:
        beside.down()
    assert beside.leftovers() == []
    # The first bed lost nothing, not even forwarding (restored only by the last bed's down).
    assert testbed.health_problems() == []
    assert IP_FORWARD.read_text().strip() == "1"


def test_prerequisites_name_root_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the `testbed` fixture fails with on a machine where it cannot run."""
    monkeypatch.setattr(deps.os, "geteuid", lambda: 1000)
    assert any("root" in problem for problem in deps.missing_prerequisites())


def test_cli_needs_root() -> None:
    """Run as `nobody` with the system Python (the venv's lives under /root, unreadable)."""
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "no system python3 to run the CLI as nobody"
    cli = [python, "-m", "standin", "--state-dir", "/tmp/nope", "up"]
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", *cli],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "root" in result.stderr


def test_down_leaves_nothing_behind(testbed: Testbed) -> None:
    """A bed of its own in the next slot (the shared bed stays up): up, down twice, checks."""
    slot = beside_slot(testbed)
    own = Testbed(REPO_ROOT / ".cache" / f"testhosts-pytest-down{slot.number}", slot)
    try:
        own.up(1, replace=True)
        assert all(h.ssh_ready() for h in own.hosts)
        ip_forward_before = own.state()["ip_forward_before"]
    finally:
        own.down()
    own.down()  # idempotent
    assert own.leftovers() == []
    # Beds of other slots (e.g. the shared bed) keep forwarding on until the last one is down.
    others_up = any(network.link_exists(s.bridge) for s in other_slots(own.slot))
    assert IP_FORWARD.read_text().strip() == ("1" if others_up else ip_forward_before)
    assert not (own.state_dir / "hosts").exists()
