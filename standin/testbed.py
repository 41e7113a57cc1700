"""The whole test bed: N Debian 13 (or 12) hosts + PostgreSQL 17 + moto S3 + network.

A bed is described by its state dir.

Everything `down` needs is written to `<state dir>/state.json` BEFORE it is created, and
every machine-wide object has a fixed name derived from the bed's slot (slot.py), so `down`
works after a crash too. One bed per slot can be up (the slot's run dir's `owner` file names
its state dir); beds in different slots run side by side. net.ipv4.ip_forward is the one
setting they share: it is restored only when the last bed goes down.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infra.outputs import check_names

from . import cgroups, deps, hosts, network
from .acme import Pebble
from .hosts import Host
from .rootfs import CACHE_ROOT, DEFAULT_DEBIAN, SUITES, BaseImage
from .services import S3_BUCKET, S3_KEY, S3_REGION, MotoS3, Postgres, SqlParams
from .slot import ENV_VAR, GLOBAL_LOCK, Slot, from_env, other_slots
from .util import REPO_ROOT, HarnessError, file_lock, run, say

STATE_DIR_BASE = REPO_ROOT / ".cache" / "testhosts"
SSH_USER = "admin"
ARTIFACTS_PREFIX = "mlflow-artifacts"


class Testbed:
    """Test hosts and services for end-to-end tests. Construct, then `up()`; `down()` at the end.

    Attributes: `slot` (Slot: names and addresses), `state_dir`, `hosts` (list of Host),
    `outputs_file` (stack outputs JSON), `ssh_key` / `known_hosts` (paths), `postgres`
    (Postgres, PostgreSQL 17), `s3` (MotoS3), `debian` (13 or 12: the hosts' release).
    The slot defaults to MLFLOW_AWS_TESTBED_SLOT's; the release to 13, the default `os`.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        state_dir: Path | str | None = None,
        slot: Slot | None = None,
        *,
        debian: int = DEFAULT_DEBIAN,
    ) -> None:
        if debian not in SUITES:
            raise HarnessError(f"debian must be one of {sorted(SUITES)}, not {debian}")
        self.debian = debian
        self.slot = slot or from_env()
        self.state_dir = Path(state_dir or default_state_dir(self.slot)).resolve()
        self.owner_file = self.slot.run_dir / "owner"
        # Survives a lost state dir (until a reboot).
        self.forward_file = self.slot.run_dir / "ip_forward_before"
        self.state_file = self.state_dir / "state.json"
        self.outputs_file = self.state_dir / "outputs.json"
        self.ssh_dir = self.state_dir / "ssh"
        self.ssh_key = self.ssh_dir / "id_ed25519"
        self.known_hosts = self.ssh_dir / "known_hosts"
        self.logs_dir = self.state_dir / "logs"
        self.credentials_dir = self.state_dir / "credentials"
        self.postgres = Postgres(self.state_dir, self.slot)
        self.s3 = MotoS3(self.state_dir, self.slot)
        # Started by the TLS tests only (the shared stack's hosts pin self-signed certificates).
        self.pebble = Pebble(self.state_dir, self.slot)
        self._refuse_other_slot()
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

    def _refuse_other_slot(self) -> None:
        """Refuse a bed recorded in another slot: we would reach (and tear down) another bed.

        State files without a slot predate slots: they are slot 0's.
        """
        recorded = self.state().get("slot", 0) if self.state_file.exists() else None
        if recorded not in (None, self.slot.number):
            raise HarnessError(
                f"the test bed in {self.state_dir} is in slot {recorded}, not "
                f"{self.slot.number}: set {ENV_VAR}={recorded} (CLI: --slot {recorded})"
            )

    def _make_hosts(self, count: int) -> list[Host]:
        return [Host(self.slot, i, self.state_dir, self.ssh_dir) for i in range(1, count + 1)]

    def _hosts_from_state(self) -> list[Host]:
        return self._make_hosts(int(self.state().get("host_count", 0)))

    def host(self, name_or_index: str | int) -> Host:
        """A host by name (`mlflow-test-1`, `mlflow-t3-1` in slot 3) or by 1-based index."""
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
        down first when `replace` is true. A running bed of another state dir in the same
        slot is always refused.
        """
        if not 1 <= host_count <= 50:
            raise HarnessError(f"--hosts must be 1..50, not {host_count}")
        deps.require_ready()
        with _slot_lock(self.slot):
            _refuse_if_other_owner(self.state_dir, self.slot)
            try:
                if self._reuse(host_count):
                    self.write_outputs()  # in this checkout's shape (e.g. an output added since)
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
        if state.get("debian", DEFAULT_DEBIAN) != self.debian:
            raise HarnessError(
                f"the test bed in {self.state_dir} runs Debian {state.get('debian')} hosts "
                f"(asked for Debian {self.debian}): take it down first"
            )
        if state.get("status") != "up" or state.get("host_count") != host_count:
            raise HarnessError(
                f"a test bed in {self.state_dir} is {state.get('status')} with "
                f"{state.get('host_count')} hosts (asked for {host_count}): run "
                f"`python -m standin down --state-dir {self.state_dir}` first"
            )
        problems = self.health_problems()
        if problems:
            raise HarnessError(
                f"the test bed in {self.state_dir} is up but unhealthy ({'; '.join(problems)}): "
                "run `python -m standin down` first"
            )
        say(f"already up in {self.state_dir}: reusing {host_count} hosts")
        self.write_outputs()  # in this version's shape
        return True

    def _bring_up(self, host_count: int) -> None:
        # Under the global lock: another slot's `down` decides on ip_forward by our owner file.
        with file_lock(GLOBAL_LOCK):
            self.owner_file.write_text(f"{self.state_dir}\n")
            if not self.forward_file.exists():  # a crashed bed may have left it behind
                self.forward_file.write_text(_ip_forward_before(self.slot) + "\n")
        mtu = network.uplink_mtu()
        self._save_state(
            status="starting", slot=self.slot.number, host_count=host_count, mtu=mtu,
            debian=self.debian,
            ip_forward_before=self.forward_file.read_text().strip(), started_at=time.time(),
        )  # fmt: skip
        _remove(self.credentials_dir)  # new hosts, new host keys
        self.hosts = self._make_hosts(host_count)
        base = BaseImage(debian=self.debian).ensure()
        self._save_state(base=str(base))
        self._ensure_ssh_key()
        network.create_bridge(self.slot, mtu)
        network.enable_forwarding(self.slot)
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
        """Stack outputs as `make infra` exports them (infra/outputs.py), plus the S3 store's."""
        first = self.hosts[0]
        return check_names(
            {
                "hosts": [
                    {
                        "name": h.name,
                        "public_ip": h.ip,
                        "private_ip": h.ip,
                        "public_dns": h.dns_name,
                        # Like the stack's generated host keys: the first connection is verified.
                        "ssh_host_key": h.host_public_key(),
                    }
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
                # The shared stack pins self-signed certificates; the TLS tests switch to acme
                # against their own ACME server (pebble) on the bed's gateway.
                "tls": {"mode": "self-signed"},
            }
        )

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
        say(f"slot:         {self.slot.number} ({ENV_VAR}), bridge {self.slot.bridge}")
        say(f"hosts' OS:    Debian {self.debian} ({SUITES[self.debian]})")
        say(f"state dir:    {self.state_dir}")
        say(f"outputs:      {self.outputs_file}")
        for host in self.hosts:
            say(f"host:         {host.name} {host.ip}  ssh {' '.join(host.ssh_argv())}")
        say(
            f"PostgreSQL:   {self.postgres.major} on {self.slot.gateway}:{self.postgres.port} "
            "(db/user mlflow)"
        )
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
        with _slot_lock(self.slot):
            _refuse_if_other_owner(self.state_dir, self.slot)
            started = time.monotonic()
            self._tear_down()
            say(f"down in {time.monotonic() - started:.1f} s")

    def _tear_down(self) -> None:
        state = self.state()
        counts = (_hosts_on_disk(self), _hosts_in_cgroups(self.slot))
        known = (int(state.get("host_count", 0)), *counts)
        self.hosts = self._make_hosts(max(known))
        hosts.stop_all(self.hosts)
        for host in self.hosts:
            host.remove()
        if self.postgres.data.exists():
            self.postgres.stop()
        self.postgres.unmount()
        hosts.unmount_all_under(self.state_dir)
        hosts.unmount_stray_overlays(CACHE_ROOT, self.slot)  # e.g. the state dir was deleted
        self.s3.stop()
        self.pebble.stop()
        self._release_network(state.get("ip_forward_before"))
        cgroups.remove_group(self.slot.cgroup_group)
        for path in (self.state_dir / "hosts", self.postgres.dir, self.s3.dir, self.pebble.dir):
            _remove(path)
        for path in (self.credentials_dir, self.state_file, self.outputs_file):
            _remove(path)
        self.hosts = []

    def _release_network(self, forward: str | None) -> None:
        """Remove the network, give up the slot (owner file), restore ip_forward if we are last.

        All under the global lock. A bed starting in another slot records ip_forward before
        we restore it (the original value) or after it sees us (ours, the same). Two beds
        going down: the second one sees the first gone (bridge AND owner) and restores it.
        """
        if forward is None and self.forward_file.exists():
            forward = self.forward_file.read_text().strip()
        with file_lock(GLOBAL_LOCK):
            busy = _slots_in_use(self.slot)
            if busy and forward is not None:
                say(f"net.ipv4.ip_forward left as it is: slot(s) {busy} still up")
                forward = None
            elif forward is None and network.link_exists(self.slot.bridge):
                say("net.ipv4.ip_forward before `up` unknown: left as it is")
            network.remove_network(self.slot, forward)
            self.forward_file.unlink(missing_ok=True)
            owner = self.owner_file
            if owner.exists() and owner.read_text().strip() == str(self.state_dir):
                owner.unlink()

    def leftovers(self) -> list[str]:
        """What of this slot still exists on the machine (empty after a clean `down`)."""
        slot = self.slot
        found = [f"netns {n}" for n in network.leftover_netns(slot)]
        found += [f"veth {v}" for v in network.leftover_veths(slot)]
        if network.link_exists(slot.bridge):
            found.append(f"bridge {slot.bridge}")
        if network.nft_table_exists(slot):
            found.append(f"nft table {slot.nft_table}")
        found += [f"mount {m}" for m in hosts.any_mounts_under(self.state_dir)]
        found += [f"cgroup {c}" for c in cgroups.leftovers(slot.cgroup_group)]
        if self.postgres.is_running():
            found.append("postgres running")
        if self.s3.pid() is not None:
            found.append("moto running")
        found += [f"{name} running" for name in ("pebble", "challtestsrv") if self.pebble.pid(name)]
        return found


def default_state_dir(slot: Slot) -> Path:
    """<repo>/.cache/testhosts in slot 0, .cache/testhosts<N> in slot N."""
    return slot.with_suffix(STATE_DIR_BASE)


def _ip_forward_before(slot: Slot) -> str:
    """ip_forward as it was before any bed: a bed up in another slot has set it to 1."""
    for other in other_slots(slot):
        recorded = other.run_dir / "ip_forward_before"
        if recorded.exists():
            return recorded.read_text().strip()
    return network.read_ip_forward()


def _slots_in_use(slot: Slot) -> list[int]:
    """Other slots with a bed up (or on its way up or down): their bridge or owner file."""
    return [
        other.number
        for other in other_slots(slot)
        if network.link_exists(other.bridge) or (other.run_dir / "owner").exists()
    ]


def _hosts_on_disk(testbed: Testbed) -> int:
    """Hosts a crashed `up` may have created before recording them."""
    host_root = testbed.state_dir / "hosts"
    if not host_root.is_dir():
        return 0
    prefix = testbed.slot.host_prefix
    names = [p.name for p in host_root.iterdir() if p.name.startswith(prefix)]
    numbers = [name.removeprefix(prefix) for name in names]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _hosts_in_cgroups(slot: Slot) -> int:
    """Hosts whose processes may outlive a lost state dir: their cgroups are named for them."""
    names = cgroups.host_names(slot.cgroup_group)
    numbers = [n.removeprefix(slot.host_prefix) for n in names if n.startswith(slot.host_prefix)]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _remove(path: Path) -> None:
    if path.is_dir():
        # --one-file-system: never descend into a host tree that is somehow still mounted.
        run(["rm", "-rf", "--one-file-system", path])
    else:
        path.unlink(missing_ok=True)


def _refuse_if_other_owner(state_dir: Path, slot: Slot) -> None:
    """Refuse while another state dir's bed runs in the slot; take down one with no process.

    A machine restored from a snapshot, or rebooted, keeps the owner file and state dir but
    none of the processes: such a bed serves nobody and only blocks the slot's names.
    """
    owner_file = slot.run_dir / "owner"
    if not owner_file.exists():
        return
    owner = Path(owner_file.read_text().strip())
    if owner == state_dir or not (owner / "state.json").exists():
        return
    other = Testbed(owner, slot)
    if other.is_running_anything():
        raise HarnessError(
            f"another test bed is up in slot {slot.number} (state dir {owner}): `python -m "
            f"standin down --state-dir {owner}` first, or use another slot "
            f"({ENV_VAR}=1..9, CLI --slot)"
        )
    say(f"the test bed of {owner} has no running process left (crash or restore): taking it down")
    other._tear_down()


def _slot_lock(slot: Slot) -> contextlib.AbstractContextManager[None]:
    """One up/down at a time per slot (other slots' run in parallel)."""
    return file_lock(slot.run_dir / "lock")
