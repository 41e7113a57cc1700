"""Real Debian 12 test hosts (systemd-nspawn) plus PostgreSQL and S3 (moto) for end-to-end tests.

CLI (`python -m tests.integration.harness ...`, as root):
    up --hosts N [--state-dir DIR]   build/cache the base, boot hosts, start services, write outputs
    down [--state-dir DIR]           stop and remove everything; restores ip_forward
    status | ssh NAME [CMD] | run NAME CMD | stop NAME | start NAME | reboot NAME | build-base

Python API (what tests/integration/conftest.py builds on):
    tb = Testbed(state_dir=None)     # default <repo>/.cache/testhosts
    tb.up(host_count=2) / tb.down()  # `up` reuses a healthy bed of the same size
    tb.hosts -> list[Host]; tb.host("mlflow-test-1" | 1) -> Host
    tb.outputs_file (stack-outputs JSON), tb.outputs(), tb.ansible_env(), tb.state_dir,
    tb.ssh_key, tb.known_hosts
    tb.query(sql, params) -> rows as user mlflow; tb.postgres.stop()/start()/dsn()/admin_sql()
    tb.list_objects(prefix) -> bucket keys; tb.s3.client() (boto3), tb.s3.bucket
    tb.start_host(host) (after host.stop()), tb.leftovers() (empty after a clean down)
    Host: name, ip, mac, dns_name, run(cmd) as root, ssh(cmd, user="admin"), ssh_argv(),
          read_file(path), write_file(path, text), kill(process_name, sig), systemctl(...),
          system_state(), stop(), reboot() -> seconds, wait_ssh(), leader_pid(), is_running()
    A command given as a list runs as is; as a string it runs through `sh -c` inside the host.

Addresses: bridge mlfa0 10.77.0.1/24; hosts 10.77.0.11, .12, ...; PostgreSQL 10.77.0.1:55432
(and 127.0.0.1:55432); moto S3 http://10.77.0.1:55900, bucket mlflow-artifacts-test.
"""

from .hosts import Host
from .testbed import DEFAULT_STATE_DIR, Testbed
from .util import HarnessError

__all__ = ["DEFAULT_STATE_DIR", "HarnessError", "Host", "Testbed"]
