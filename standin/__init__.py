"""Real Debian 13 (or 12) test hosts (systemd-nspawn), PostgreSQL 17 and S3 (moto) for tests.

CLI (`python -m standin ...`, as root):
    up --hosts N [--debian 13|12]    build/cache the base, boot hosts, start services, write outputs
    down [--state-dir DIR]           stop and remove everything; restores ip_forward
    status | ssh NAME [CMD] | run NAME CMD | stop NAME | start NAME | reboot NAME | build-base
    --slot N (or env MLFLOW_AWS_TESTBED_SLOT=N, 0..9, default 0): which slot's names/addresses

Python API (what tests/integration/conftest.py builds on):
    tb = Testbed(state_dir=None, slot=None, debian=13)  # <repo>/.cache/testhosts[N], env's slot
    tb.up(host_count=2) / tb.down()  # `up` reuses a healthy bed of the same size
    tb.slot -> Slot (bridge, gateway, host_ip(i), pg_port, s3_port, ...; see slot.py)
    tb.hosts -> list[Host]; tb.host("mlflow-test-1" | 1) -> Host
    tb.outputs_file (stack-outputs JSON), tb.outputs(), tb.ansible_env(), tb.state_dir,
    tb.ssh_key, tb.known_hosts
    tb.query(sql, params) -> rows as user mlflow; tb.postgres.stop()/start()/dsn()/admin_sql()
    tb.postgres.tool("pg_restore") -> argv of PostgreSQL 17's own client (files by stdin)
    tb.list_objects(prefix) -> bucket keys; tb.s3.client() (boto3), tb.s3.bucket
    tb.start_host(host) (after host.stop()), tb.leftovers() (empty after a clean down)
    Host: name, ip, mac, dns_name, run(cmd) as root, ssh(cmd, user="admin"), ssh_argv(),
          read_file(path), write_file(path, text), kill(process_name, sig), systemctl(...),
          system_state(), stop(), reboot() -> seconds, wait_ssh(), leader_pid(), is_running()
    A command given as a list runs as is; as a string it runs through `sh -c` inside the host.

Addresses in slot 0: bridge mlfa0 10.77.0.1/24; hosts 10.77.0.11, .12, ... (mlflow-test-1, ...);
PostgreSQL 10.77.0.1:55432 (and 127.0.0.1:55432); moto S3 http://10.77.0.1:55900, bucket
mlflow-artifacts-test. Slot N: mlfaN 10.77.N.1/24, hosts 10.77.N.11... (mlflow-tN-1...),
ports 55432+10*N and 55900+10*N; beds in different slots run side by side.
"""

from .hosts import Host
from .slot import Slot
from .testbed import Testbed, default_state_dir
from .util import HarnessError

__all__ = ["HarnessError", "Host", "Slot", "Testbed", "default_state_dir"]
