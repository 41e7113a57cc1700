"""The whole test bed: N hosts + PostgreSQL + moto S3 + network, described by a state dir.

Everything `down` needs is written to `<state dir>/state.json` BEFORE it is created, and
every machine-wide object has a fixed name, so `down` works after a crash too. Only one
test bed can be up per machine (the addresses are fixed); /run/mlflow-aws-testhosts/owner
names the state dir of the one that is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import cgroups, deps, hosts, network
from .hosts import Host
from .rootfs import CACHE_ROOT, BaseImage
from .services import S3_BUCKET, S3_KEY, S3_REGION, MotoS3, Postgres, SqlParams
from .util import REPO_ROOT, HarnessError, run, say

DEFAULT_STATE_DIR = REPO_ROOT / ".cache" / "testhosts"
RUN_DIR = Path("/run/mlflow-aws-testhosts")
OWNER_FILE = RUN_DIR / "owner"
FORWARD_FILE = RUN_DIR / "ip_forward_before"  # survives a lost state dir (until a reboot)
HOST_PREFIX = "mlflow-test-"
SSH_USER = "admin"
ARTIFACTS_PREFIX = "mlflow-artifacts"


class Testbed:
    """Test hosts and services for end-to-end tests. Construct, then `up()`; `down()` at the end.

    Attributes: `state_dir`, `hosts` (list of Host), `outputs_file` (stack outputs JSON),
    `ssh_key` / `known_hosts` (paths), `postgres` (Postgres), `s3` (MotoS3).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).resolve()
        self.state_file = self.state_dir / "state.json"
        self.outputs_file = self.state_dir / "outputs.json"
        self.ssh_dir = self.state_dir / "ssh"
        self.ssh_key = self.ssh_dir / "id_ed25519"
        self.known_hosts = self.ssh_dir / "known_hosts"
        self.logs_dir = self.state_dir / "logs"
        self.credentials_dir = self.state_dir / "credentials"
        self.postgres = Postgres(self.state_dir)
        self.s3 = MotoS3(self.state_dir)
        self.hosts: list[Host] = self._hosts_from_state()

    # ----- state -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _save_state(self, **changes: Any) -> None:
        state = self.state() | changes
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.rename(self.state_file)

    def _make_hosts(self, count: int) -> list[Host]:
        return [
            Host(f"{HOST_PREFIX}{i}", i, self.state_dir, self.ssh_dir) for i in range(1, count + 1)
        ]

    def _hosts_from_state(self) -> list[Host]:
        return self._make_hosts(int(self.state().get("host_count", 0)))

    def host(self, name_or_index: str | int) -> Host:
        """A host by name (`mlflow-test-1`) or by 1-based index."""
        for host in self.hosts:
            if name_or_index in (host.name, host.index):
                return host
        raise KeyError(f"no host {name_or_index!r}; have {[h.name for h in self.hosts]}")

    def is_up(self) -> bool:
        return self.state().get("status") == "up"

    # ----- up --------------------------------------------------------------------------

    def up(self, host_count: int = 2, *, replace: bool = False) -> Testbed:
        """Bring everything up, or reuse it when it is already up, healthy, with as many hosts.

        A bed in this state dir that is unhealthy or of another size is refused, or taken
        down first when `replace` is true. A bed of another state dir is always refused.
        """
        if not 1 <= host_count <= 50:
            raise HarnessError(f"--hosts must be 1..50, not {host_count}")
        deps.require_ready()
        with _machine_lock():
            _refuse_if_other_owner(self.state_dir)
            try:
                if self._reuse(host_count):
                    return self
            except HarnessError as refusal:
                if not replace:
                    raise
                say(f"{refusal}\n[testhosts] replacing it")
                self._tear_down()
            started = time.monotonic()
            try:
                self._bring_up(host_count)
            except BaseException:
                say("up failed: cleaning up (logs kept in " + str(self.logs_dir) + ")")
                self._tear_down()
                raise
            say(f"up in {time.monotonic() - started:.1f} s")
        self.print_summary()
        return self

    def _reuse(self, host_count: int) -> bool:
        state = self.state()
        if not state:
            return False
        if state.get("status") != "up" or state.get("host_count") != host_count:
            raise HarnessError(
                f"a test bed in {self.state_dir} is {state.get('status')} with "
                f"{state.get('host_count')} hosts (asked for {host_count}): run "
                f"`python -m tests.integration.harness down --state-dir {self.state_dir}` first"
            )
        problems = self.health_problems()
        if problems:
            raise HarnessError(
                f"the test bed in {self.state_dir} is up but unhealthy ({'; '.join(problems)}): "
                "run `python -m tests.integration.harness down` first"
            )
        say(f"already up in {self.state_dir}: reusing {host_count} hosts")
        return True

    def _bring_up(self, host_count: int) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        OWNER_FILE.write_text(f"{self.state_dir}\n")
        if not FORWARD_FILE.exists():  # a crashed bed may have left ip_forward=1 already
            FORWARD_FILE.write_text(network.read_ip_forward() + "\n")
        mtu = network.uplink_mtu()
        self._save_state(
            status="starting", host_count=host_count, mtu=mtu,
            ip_forward_before=FORWARD_FILE.read_text().strip(), started_at=time.time(),
        )  # fmt: skip
        self.state_dir.chmod(0o755)  # user postgres must traverse it to its data dir
        _remove(self.credentials_dir)  # new hosts, new host keys
        self.hosts = self._make_hosts(host_count)
        base = BaseImage().ensure()
        self._save_state(base=str(base))
        self._ensure_ssh_key()
        network.create_bridge(mtu)
        network.enable_forwarding()
        self._boot_hosts(base, mtu)
        self._save_state(status="up")
        self.write_outputs()

    def _ensure_ssh_key(self) -> None:
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if not self.ssh_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlflow-testhosts",
                 "-f", self.ssh_key])  # fmt: skip
        self.known_hosts.touch()

    def _boot_hosts(self, base: Path, mtu: int) -> None:
        """Launch every host, start the services while they boot, then wait for SSH."""
        started = time.monotonic()
        say(f"booting {len(self.hosts)} hosts: {', '.join(h.ip for h in self.hosts)}")
        for host in self.hosts:
            host.start(base, mtu, self.hosts)
        self.postgres.ensure()
        self.s3.ensure()
        with ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            list(pool.map(lambda h: h.wait_ssh(120), self.hosts))
        say(f"{len(self.hosts)} hosts answer SSH ({time.monotonic() - started:.1f} s after launch)")

    def start_host(self, host: Host) -> float:
        """Start a stopped host again (state kept); return seconds until SSH answers."""
        state = self.state()
        started = time.monotonic()
        host.start(Path(state["base"]), int(state["mtu"]), self.hosts)
        host.wait_ssh(120)
        return time.monotonic() - started

    def is_running_anything(self) -> bool:
        """Whether any host, PostgreSQL or moto of this bed still runs."""
        return (
            any(h.is_running() for h in self.hosts)
            or self.postgres.is_running()
            or self.s3.pid() is not None
        )

    def health_problems(self) -> list[str]:
        problems = [f"{h.name} not running" for h in self.hosts if not h.is_running()]
        problems += [f"{h.name} no SSH" for h in self.hosts if h.is_running() and not h.ssh_ready()]
        if not self.postgres.is_running():
            problems.append("PostgreSQL not running")
        if self.s3.pid() is None:
            problems.append("moto not running")
        return problems

    # ----- outputs ---------------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        """Stack outputs in the shape Pulumi exports (see /work/contracts.md)."""
        first = self.hosts[0]
        return {
            "hosts": [
                {"name": h.name, "public_ip": h.ip, "private_ip": h.ip, "public_dns": h.dns_name}
                for h in self.hosts
            ],
            "ssh_user": SSH_USER,
            "ssh_private_key": self.ssh_key.read_text(),
            "db_dsn": self.postgres.dsn(),
            "artifacts_destination": f"s3://{S3_BUCKET}/{ARTIFACTS_PREFIX}",
            "region": S3_REGION,
            "url": f"https://{first.ip}",
            "s3_endpoint_url": self.s3.endpoint_url,
            "s3_access_key_id": S3_KEY,
            "s3_secret_access_key": S3_KEY,
        }

    def write_outputs(self) -> Path:
        tmp = self.outputs_file.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(self.outputs(), indent=2) + "\n")
        tmp.rename(self.outputs_file)
        return self.outputs_file

    def ansible_env(self) -> dict[str, str]:
        """Environment for ansible-playbook / the inventory plugin against these hosts."""
        return {
            "MLFLOW_AWS_OUTPUTS_FILE": str(self.outputs_file),
            # Fresh per bed: `up` and `down` empty it, so no stale pinned host keys survive.
            "MLFLOW_AWS_CREDENTIALS_DIR": str(self.credentials_dir),
        }

    def print_summary(self) -> None:
        say(f"state dir:    {self.state_dir}")
        say(f"outputs:      {self.outputs_file}")
        for host in self.hosts:
            say(f"host:         {host.name} {host.ip}  ssh {' '.join(host.ssh_argv())}")
        say(f"PostgreSQL:   {network.GATEWAY}:{self.postgres.port} (db/user mlflow)")
        say(f"S3 (moto):    {self.s3.endpoint_url} bucket {self.s3.bucket}")

    # ----- helpers for tests -----------------------------------------------------------

    def query(self, sql: str, params: SqlParams = None) -> list[tuple]:
        """SQL as user mlflow in database mlflow (psycopg2)."""
        return self.postgres.query(sql, params)

    def list_objects(self, prefix: str = "") -> list[str]:
        """Object keys in the artifacts bucket."""
        return self.s3.list_objects(prefix)

    # ----- down ------------------------------------------------------------------------

    def down(self) -> None:
        """Stop and remove everything; idempotent, and works from the state dir after a crash."""
        if os.geteuid() != 0:
            raise HarnessError("down needs root (it unmounts and deletes network devices)")
        with _machine_lock():
            _refuse_if_other_owner(self.state_dir)
            started = time.monotonic()
            self._tear_down()
            say(f"down in {time.monotonic() - started:.1f} s")

    def _tear_down(self) -> None:
        state = self.state()
        known = (int(state.get("host_count", 0)), _hosts_on_disk(self), _hosts_in_cgroups())
        self.hosts = self._make_hosts(max(known))
        hosts.stop_all(self.hosts)
        for host in self.hosts:
            host.remove()
        hosts.unmount_all_under(self.state_dir)
        hosts.unmount_stray_overlays(CACHE_ROOT)  # e.g. after the state dir itself was deleted
        self.s3.stop()
        if self.postgres.data.exists():
            self.postgres.stop()
        forward = state.get("ip_forward_before")
        if forward is None and FORWARD_FILE.exists():
            forward = FORWARD_FILE.read_text().strip()
        if forward is None and network.link_exists(network.BRIDGE):
            say("net.ipv4.ip_forward before `up` unknown: left as it is")
        network.remove_network(HOST_PREFIX, forward)
        FORWARD_FILE.unlink(missing_ok=True)
        cgroups.remove_group()
        for path in (self.state_dir / "hosts", self.postgres.dir, self.s3.dir):
            _remove(path)
        for path in (self.credentials_dir, self.state_file, self.outputs_file):
            _remove(path)
        if OWNER_FILE.exists() and OWNER_FILE.read_text().strip() == str(self.state_dir):
            OWNER_FILE.unlink()
        self.hosts = []

    def leftovers(self) -> list[str]:
        """What of ours still exists on the machine (empty after a clean `down`)."""
        found = [f"netns {n}" for n in network.leftover_netns(HOST_PREFIX)]
        found += [f"veth {v}" for v in network.leftover_veths()]
        if network.link_exists(network.BRIDGE):
            found.append(f"bridge {network.BRIDGE}")
        if network.nft_table_exists():
            found.append(f"nft table {network.NFT_TABLE}")
        found += [f"mount {m}" for m in hosts.any_mounts_under(self.state_dir)]
        found += [f"cgroup {c}" for c in cgroups.leftovers()]
        if self.postgres.is_running():
            found.append("postgres running")
        if self.s3.pid() is not None:
            found.append("moto running")
        return found


def _hosts_on_disk(testbed: Testbed) -> int:
    """Hosts a crashed `up` may have created before recording them."""
    host_root = testbed.state_dir / "hosts"
    if not host_root.is_dir():
        return 0
    numbers = [p.name.removeprefix(HOST_PREFIX) for p in host_root.iterdir()]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _hosts_in_cgroups() -> int:
    """Hosts whose processes may outlive a lost state dir: their cgroups are named for them."""
    names = [d.name for root in cgroups.roots() for d in (root / cgroups.GROUP).glob("*/")]
    numbers = [n.removeprefix(HOST_PREFIX) for n in names if n.startswith(HOST_PREFIX)]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _remove(path: Path) -> None:
    if path.is_dir():
        # --one-file-system: never descend into a host tree that is somehow still mounted.
        run(["rm", "-rf", "--one-file-system", path])
    else:
        path.unlink(missing_ok=True)


def _refuse_if_other_owner(state_dir: Path) -> None:
    """Refuse while another state dir's bed runs; take down one whose processes are all gone.

    A machine restored from a snapshot, or rebooted, keeps the owner file and state dir but
    none of the processes: such a bed serves nobody and only blocks the fixed names.
    """
    if not OWNER_FILE.exists():
        return
    owner = Path(OWNER_FILE.read_text().strip())
    if owner == state_dir or not (owner / "state.json").exists():
        return
    other = Testbed(owner)
    if other.is_running_anything():
        raise HarnessError(
            f"another test bed is up on this machine (state dir {owner}); the addresses are "
            f"fixed, so only one can run: `python -m tests.integration.harness down "
            f"--state-dir {owner}` first"
        )
    say(f"the test bed of {owner} has no running process left (crash or restore): taking it down")
    other._tear_down()


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """One up/down at a time on this machine."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
