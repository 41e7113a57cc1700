"""One test host: an overlay over the base tree, booted by systemd-nspawn in its own netns.

Files of host NAME under `<state dir>/hosts/NAME/`: `upper/` (everything the host changed,
kept across stop/start/reboot), `work/`, `merged/` (the mount nspawn boots),
`supervisor.pid`. nspawn's and the host's console output: `<state dir>/logs/NAME.console.log`
(kept by `down`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from . import cgroups, network
from .network import HostAddress
from .slot import Slot
from .util import HarnessError, process_alive, quiet, run, say, wait_for

SUPERVISOR = Path(__file__).with_name("supervise.py")
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_CA_DIR = "usr/local/share/ca-certificates/mlflow-testhosts"
HOST_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")  # fmt: skip

Command = Sequence[str] | str


def _argv(command: Command) -> list[str]:
    """A list runs as is; a string runs through `sh -c` inside the host."""
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


class Host:
    """A booted (or bootable) test host. `run` acts as root inside; `ssh` as a user over SSH."""

    def __init__(self, slot: Slot, index: int, state_dir: Path, ssh_dir: Path) -> None:
        self.name = f"{slot.host_prefix}{index}"
        self.index = index
        self.slot = slot
        self.address = HostAddress(index, slot)
        self.ip = self.address.ip
        self.mac = self.address.mac
        self.dns_name = f"{self.name}.test"
        self.dir = state_dir / "hosts" / self.name
        self.upper, self.work, self.merged = (self.dir / d for d in ("upper", "work", "merged"))
        self.pid_file = self.dir / "supervisor.pid"
        self.console_log = state_dir / "logs" / f"{self.name}.console.log"
        self.ssh_key = ssh_dir / "id_ed25519"
        self.known_hosts = ssh_dir / "known_hosts"

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ip={self.ip!r})"

    # ----- lifecycle -------------------------------------------------------------------

    def start(self, base: Path, mtu: int, peers: Sequence[Host]) -> None:
        """Mount, give the host its identity on first start, and launch nspawn (no waiting)."""
        if self.is_running():
            return
        self.mount(base)
        if not (self.dir / "identity-done").exists():
            self._write_identity(peers)
        network.create_host_link(self.name, self.address, mtu)
        self._launch()

    def mount(self, base: Path) -> None:
        for directory in (self.upper, self.work, self.merged):
            directory.mkdir(parents=True, exist_ok=True)
        if not self.is_mounted():
            options = f"lowerdir={base},upperdir={self.upper},workdir={self.work}"
            run(["mount", "-t", "overlay", "overlay", "-o", options, self.merged])

    def is_mounted(self) -> bool:
        return os.path.ismount(self.merged)

    def _launch(self) -> None:
        nspawn = [
            "systemd-nspawn", "--boot", f"--directory={self.merged}", f"--machine={self.name}",
            # Both needed where the machine's PID 1 is not systemd ("Failed to open system bus").
            "--register=no", "--keep-unit",
            "--console=read-only", f"--network-namespace-path={network.NETNS_DIR / self.name}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        ]  # fmt: skip
        cgroup_args = [arg for d in self._cgroup_dirs() for arg in ("--cgroup", str(d))]
        argv = [sys.executable, str(SUPERVISOR), "--ip", self.ip, "--bridge", self.slot.bridge]
        with self.console_log.open("ab") as log:
            proc = subprocess.Popen(
                [*argv, *cgroup_args, "--", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `up`; its own process group
            )
        self.pid_file.write_text(f"{proc.pid}\n")

    def supervisor_pid(self) -> int | None:
        if not self.pid_file.exists():
            return None
        pid = int(self.pid_file.read_text())
        return pid if process_alive(pid) else None

    def is_running(self) -> bool:
        return self.supervisor_pid() is not None

    def leader_pid(self) -> int | None:
        """PID (on the machine) of the host's PID 1, found through the host's cgroups."""
        for directory in self._cgroup_dirs():
            for pid in cgroups.pids(directory):
                if _ns_pid(pid) == 1:
                    return pid
        return None

    def stop(self, timeout: float = 30) -> None:
        """Power the host off (SIGTERM to nspawn via the supervisor); SIGKILL after `timeout`."""
        pid = self.supervisor_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(f"{self.name} to power off", lambda: not process_alive(pid), timeout)
            except HarnessError:
                say(f"{self.name} did not stop within {timeout:.0f} s: killing it")
                os.kill(pid, signal.SIGKILL)
        killed = cgroups.kill_all(self.slot.cgroup_group, self.name)
        if killed:
            wait_for(f"{self.name}'s processes to die", lambda: not self._cgroup_pids(), 10)
        self.pid_file.unlink(missing_ok=True)
        if self.is_mounted() and not quiet(["umount", self.merged]):
            say(f"{self.merged} busy: detaching it (umount --lazy)")
            run(["umount", "--lazy", self.merged])

    def _cgroup_dirs(self) -> list[Path]:
        return cgroups.host_dirs(self.slot.cgroup_group, self.name)

    def _cgroup_pids(self) -> list[int]:
        return [p for d in self._cgroup_dirs() for p in cgroups.pids(d)]

    def reboot(self, timeout: float = 60) -> float:
        """Reboot from inside (`systemctl reboot`); return seconds until SSH answers again."""
        old_leader = self.leader_pid()
        start = time.monotonic()
        self.run(["systemctl", "reboot"], check=False)
        self.wait_rebooted(old_leader, timeout)
        return time.monotonic() - start

    def wait_rebooted(self, old_leader: int | None, timeout: float = 60) -> None:
        """Wait for a new PID 1, then SSH: `systemctl reboot` returns before the host goes down,
        and until then SSH still answers from the old boot."""
        wait_for(f"{self.name} to reboot", lambda: self.leader_pid() not in (None, old_leader),
                 timeout)  # fmt: skip
        self.wait_ssh(timeout)

    def remove(self) -> None:
        """Forget the host: stop it, drop its network, cgroups and files."""
        self.stop()
        network.remove_host_link(self.name, self.address.veth)
        cgroups.remove_host(self.slot.cgroup_group, self.name)
        if self.dir.exists():
            run(["rm", "-rf", "--one-file-system", self.dir])

    # ----- first-boot identity ---------------------------------------------------------

    def _write_identity(self, peers: Sequence[Host]) -> None:
        """Hostname, /etc/hosts, machine-id, SSH host keys, admin's key, DNS, CA bundle."""
        root = self.merged
        (root / "etc/hostname").write_text(f"{self.name}\n")
        (root / "etc/hosts").write_text(_hosts_file(self, peers))
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text(_machine_resolv_conf())
        run(["ssh-keygen", "-A", "-f", root])
        self._authorize_admin_key()
        _install_machine_cas(root)
        self._record_host_key()
        (self.dir / "identity-done").write_text("")

    def _authorize_admin_key(self, user: str = "admin") -> None:
        uid, gid = _passwd_ids(self.merged, user)
        ssh_dir = self.merged / "home" / user / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(self.ssh_key.with_suffix(".pub").read_text())
        keys.chmod(0o600)
        for path in (ssh_dir, keys):
            os.chown(path, uid, gid)

    def host_public_key(self) -> str:
        """The host's ED25519 SSH host key ("ssh-ed25519 AAAA..."), as a stack output carries it."""
        key = (self.merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        return f"{key[0]} {key[1]}"

    def _record_host_key(self) -> None:
        key = (self.merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        line = f"{self.ip},{self.name},{self.dns_name} {key[0]} {key[1]}\n"
        others = []
        if self.known_hosts.exists():
            others = [
                existing
                for existing in self.known_hosts.read_text().splitlines(keepends=True)
                if not existing.startswith(f"{self.ip},")
            ]
        self.known_hosts.write_text("".join(others) + line)

    # ----- operations for tests --------------------------------------------------------

    def run(
        self,
        command: Command,
        *,
        check: bool = True,
        input_text: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the host (nsenter into PID 1's namespaces)."""
        leader = self.leader_pid()
        if leader is None:
            raise HarnessError(f"{self.name} is not running")
        nsenter = ["nsenter", f"--target={leader}", "--mount", "--uts", "--ipc", "--net",
                   "--pid", "--cgroup", "--root", "--wd"]  # fmt: skip
        argv = [*nsenter, "env", "-i", *HOST_ENV, *_argv(command)]
        return run(argv, check=check, input_text=input_text, timeout=timeout)

    def ssh_argv(self, user: str = "admin") -> list[str]:
        """ssh command line (without the remote command) for `user` on this host."""
        return [
            "ssh", "-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"{user}@{self.ip}",
        ]  # fmt: skip

    def ssh(
        self, command: Command, *, user: str = "admin", check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a command over SSH (as `admin` by default; prefix `sudo` for root)."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return run([*self.ssh_argv(user), remote], check=check, timeout=timeout)

    def ssh_ready(self) -> bool:
        if not _port_open(self.ip, 22):
            return False
        try:
            return self.ssh(["true"], check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ssh(self, timeout: float = 90) -> float:
        def ready() -> bool:
            if not self.is_running():
                raise HarnessError(f"{self.name} stopped while booting; see {self.console_log}")
            return self.ssh_ready()

        return wait_for(f"SSH on {self.name} ({self.ip})", ready, timeout, interval=0.3)

    def read_file(self, path: str) -> str:
        """A file's text as the host sees it (also /run, /tmp and other mounts inside)."""
        return self.run(["cat", "--", path]).stdout

    def write_file(self, path: str, content: str, mode: str = "0644") -> None:
        self.run(["install", "-D", "-m", mode, "/dev/stdin", path], input_text=content)

    def kill(self, process: str, sig: str = "KILL") -> int:
        """Send `sig` to every process inside named exactly `process`; return how many."""
        pids = self.run(["pgrep", "-x", process], check=False).stdout.split()
        if pids:
            self.run(["kill", f"-{sig}", *pids], check=False)
        return len(pids)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)

    def system_state(self) -> str:
        """`systemctl is-system-running` (running, degraded, starting...)."""
        return self.systemctl("is-system-running", check=False).stdout.strip()


def _ns_pid(pid: int) -> int | None:
    """The innermost PID-namespace number of `pid` (1 for a host's init)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                numbers = line.split()[1:]
                return int(numbers[-1]) if len(numbers) > 1 else None
    except FileNotFoundError:
        return None
    return None


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def _hosts_file(host: Host, peers: Sequence[Host]) -> str:
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{host.dns_name} {host.name}"]
    lines += [f"{peer.ip}\t{peer.dns_name} {peer.name}" for peer in peers if peer is not host]
    lines += ["::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes"]
    return "\n".join(lines) + "\n"


def _machine_resolv_conf() -> str:
    """The machine's resolvers; a loopback stub resolver would be the host's own loopback."""
    text = Path("/etc/resolv.conf").read_text()
    if "nameserver 127." in text and Path("/run/systemd/resolve/resolv.conf").exists():
        text = Path("/run/systemd/resolve/resolv.conf").read_text()
    return text


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise HarnessError(f"user {user} missing from the base image")


def _pem_blocks(text: str) -> list[str]:
    marker = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + marker + "\n" for block in text.split(marker)[:-1]]


def _install_machine_cas(root: Path) -> None:
    """Trust the machine's CAs inside the host, e.g. a TLS-intercepting proxy's.

    The certificates the host lacks go to /usr/local/share/ca-certificates (so a later
    update-ca-certificates keeps them) and are appended to the host's bundle right away.
    """
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    have = set(_pem_blocks(bundle.read_text()))
    extra = [pem for pem in _pem_blocks(MACHINE_CA_BUNDLE.read_text()) if pem not in have]
    if not extra:
        return
    ca_dir = root / HOST_CA_DIR
    ca_dir.mkdir(parents=True, exist_ok=True)
    for number, pem in enumerate(extra, start=1):
        (ca_dir / f"machine-{number}.crt").write_text(pem)
    with bundle.open("a") as handle:
        handle.writelines(extra)


def stop_all(hosts: Sequence[Host]) -> None:
    """Stop hosts in parallel: SIGTERM to all first, then wait for each."""
    for host in hosts:
        pid = host.supervisor_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    for host in hosts:
        host.stop()


def any_mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def unmount_stray_overlays(cache_root: Path, slot: Slot) -> None:
    """Unmount the slot's host overlays (<dir>/<host name>/merged) on one of our base trees.

    By host name: the base is shared, and other slots' hosts run on it too.
    """
    marker = f"lowerdir={cache_root}/"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _source, target, fstype, options = line.split()[:4]
        mount_point = Path(target)
        ours = mount_point.name == "merged" and mount_point.parent.name.startswith(slot.host_prefix)
        if fstype == "overlay" and marker in options and ours:
            quiet(["umount", "--lazy", target])


def unmount_all_under(directory: Path) -> None:
    for mount_point in sorted(any_mounts_under(directory), reverse=True):
        quiet(["umount", "--lazy", mount_point])
