"""The services the hosts use: a dedicated PostgreSQL 17 cluster and a moto S3 server.

Both listen on the slot's bridge address (10.77.N.1) so the hosts reach them like RDS and S3;
PostgreSQL also listens on 127.0.0.1 for the tests. Ports are the slot's (55432 and 55900 in
slot 0, +10 per slot). Their files live in the state dir.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from .slot import Slot
from .util import REPO_ROOT, HarnessError, process_alive, run, say, wait_for

SqlParams = tuple[Any, ...] | dict[str, Any] | None

PG_DB = "mlflow"
PG_USER = "mlflow"
S3_BUCKET = "mlflow-artifacts-test"
S3_KEY = "testing"
S3_REGION = "us-east-1"


def pg_conf(slot: Slot) -> str:
    return f"""
# mlflow-aws test harness
listen_addresses = '{slot.gateway},127.0.0.1'
port = {slot.pg_port}
password_encryption = scram-sha-256
max_connections = 100
# Throwaway test data: durability is not worth the disk waits.
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def pg_hba(slot: Slot) -> str:
    return f"""\
# mlflow-aws test harness: the superuser only over the socket, the others by password
# (mlflow, the master user as on RDS, and the login roles `make rotate-db` creates).
local all postgres peer
host {PG_DB} all 127.0.0.1/32 scram-sha-256
host {PG_DB} all {slot.subnet} scram-sha-256
"""


def random_password(length: int = 32) -> str:
    """Letters and digits only: safe inside a DSN URL without quoting."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# The database stand-in runs RDS's default major version (17) from Debian 13's own packages,
# whatever the machine's release: a Debian 13 tree with postgresql-17 (rootfs.py), mounted as
# an overlay per bed and entered with chroot. No network namespace of its own: the server
# listens on the machine's bridge address and 127.0.0.1, as RDS answers the hosts.
PG_MAJOR = 17
PG_DEBIAN = 13
PG_BIN = f"/usr/lib/postgresql/{PG_MAJOR}/bin"
PG_DATA = "/var/lib/mlflow-standin/data"  # inside the tree
PG_SOCKET_DIR = "/var/run/postgresql"
PG_LOG = "/var/log/postgresql/standin.log"
CHROOT_ENV = ("env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp")


def _tree_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise HarnessError(f"no user {user} in {root}/etc/passwd")


def postgres_base() -> Any:
    """The cached Debian 13 + postgresql-17 tree (built on first use, like the hosts' base)."""
    from .rootfs import BaseImage  # late: rootfs imports nothing from here, but keep it light

    return BaseImage(debian=PG_DEBIAN, extra_packages=(f"postgresql-{PG_MAJOR}",))


class Postgres:
    """A PostgreSQL 17 cluster of its own, run from a Debian 13 tree (chroot), not the system one.

    Files under `<state dir>/postgres/`: `upper/` (the cluster and its log), `work/`, `root/`
    (the overlay the server runs in), `mlflow.password`. The log is copied to
    `<state dir>/logs/postgres.log` when the server stops.
    """

    def __init__(self, state_dir: Path, slot: Slot) -> None:
        self.slot = slot
        self.dir = state_dir.resolve() / "postgres"
        self.upper, self.work, self.root = (self.dir / d for d in ("upper", "work", "root"))
        self.data = self.upper / PG_DATA.lstrip("/")  # the cluster, seen from the machine
        self.log = state_dir.resolve() / "logs" / "postgres.log"
        self.password_file = self.dir / "mlflow.password"
        self.port = slot.pg_port
        self.major = PG_MAJOR

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def dsn(self, host: str | None = None) -> str:
        host = host or self.slot.gateway
        return f"postgresql://{PG_USER}:{self.password}@{host}:{self.port}/{PG_DB}"

    # ----- the tree ----------------------------------------------------------------------

    def mount(self) -> None:
        """Overlay over the PostgreSQL base, plus /proc and /dev for the server (idempotent)."""
        base = postgres_base().ensure()
        for directory in (self.upper, self.work, self.root):
            directory.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(self.root):
            options = f"lowerdir={base},upperdir={self.upper},workdir={self.work}"
            run(["mount", "-t", "overlay", "overlay", "-o", options, self.root])
        if not os.path.ismount(self.root / "proc"):
            run(["mount", "-t", "proc", "proc", self.root / "proc"])
        if not os.path.ismount(self.root / "dev"):
            run(["mount", "--bind", "/dev", self.root / "dev"])

    def unmount(self) -> None:
        for target in (self.root / "dev", self.root / "proc", self.root):
            if os.path.ismount(target):
                run(["umount", "--lazy", target], check=False)

    def is_mounted(self) -> bool:
        return os.path.ismount(self.root)

    def run_in_tree(
        self, argv: list[str], *, user: str = "postgres", **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """Run a command of the tree (e.g. pg_restore, as shipped with PostgreSQL 17) as `user`."""
        if not self.is_mounted():
            raise HarnessError(f"the PostgreSQL tree {self.root} is not mounted (bed down?)")
        return run([*self._chroot(user), *argv], **kwargs)

    def tool(self, name: str) -> list[str]:
        """argv that runs PostgreSQL 17's client `name` from the machine (give files by stdin)."""
        return [*self._chroot("postgres"), f"{PG_BIN}/{name}"]

    def _chroot(self, user: str) -> list[str]:
        # Numeric ids from the tree's own passwd: the machine's user postgres may differ.
        uid, gid = _tree_ids(self.root, user)
        return ["chroot", f"--userspec={uid}:{gid}", str(self.root), *CHROOT_ENV]

    # ----- the cluster -------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the cluster on first use, then make sure it runs."""
        self.mount()
        if not (self.data / "PG_VERSION").exists():
            self._init()
        self.start()

    def _init(self) -> None:
        say(f"creating PostgreSQL {PG_MAJOR} cluster in {self.data}")
        self.run_in_tree(
            ["install", "-d", "-m", "0700", "-o", "postgres", "-g", "postgres", PG_DATA],
            user="root",
        )
        self.run_in_tree(
            [f"{PG_BIN}/initdb", "-D", PG_DATA, "-U", "postgres", "--encoding=UTF8",
             "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"],
        )  # fmt: skip
        data = self.root / PG_DATA.lstrip("/")  # written through the mount, not the upper dir
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(pg_conf(self.slot) + f"unix_socket_directories = '{PG_SOCKET_DIR}'\n")
            # /dev is the machine's (bind mount): keep shared memory segments in the data dir.
            conf.write("dynamic_shared_memory_type = mmap\n")
        (data / "pg_hba.conf").write_text(pg_hba(self.slot))
        self.password_file.write_text(random_password() + "\n")
        self.password_file.chmod(0o600)
        self.start()
        # The password goes through stdin, never a command line (process listings).
        self.admin_sql(
            # Like RDS's master user: not a superuser, but may create roles and databases, and
            # (as rds_superuser does) see every session in pg_stat_activity.
            f"CREATE ROLE {PG_USER} LOGIN CREATEROLE CREATEDB PASSWORD '{self.password}';\n"
            f"GRANT pg_read_all_stats TO {PG_USER};\n"
            f"CREATE DATABASE {PG_DB} OWNER {PG_USER};\n"
        )

    def start(self) -> None:
        if self.is_running():
            return
        self.mount()
        self.run_in_tree(
            ["install", "-d", "-m", "2775", "-o", "postgres", "-g", "postgres", PG_SOCKET_DIR,
             "/var/log/postgresql"],
            user="root",
        )  # fmt: skip
        self.run_in_tree(
            [f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "-l", PG_LOG, "-w", "-t", "60", "start"],
            timeout=90,
        )
        say(
            f"PostgreSQL {PG_MAJOR} listening on {self.slot.gateway}:{self.port} "
            f"and 127.0.0.1:{self.port}"
        )

    def stop(self) -> None:
        """Fast shutdown (as in a DB outage; clients are disconnected)."""
        if self.is_running():
            self.run_in_tree(
                [f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "-m", "fast", "-w", "stop"], timeout=90
            )
        self._keep_log()

    def _keep_log(self) -> None:
        log = self.upper / PG_LOG.lstrip("/")
        if log.exists():
            self.log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, self.log)

    def is_running(self) -> bool:
        if not self.is_mounted() or not (self.data / "PG_VERSION").exists():
            return False
        status = self.run_in_tree([f"{PG_BIN}/pg_ctl", "-D", PG_DATA, "status"], check=False)
        return status.returncode == 0

    def server_version(self) -> str:
        return self.admin_sql("SHOW server_version;").strip()

    def admin_sql(self, sql: str) -> str:
        """Run SQL as the superuser over the unix socket (psql reads it from stdin)."""
        psql = [f"{PG_BIN}/psql", "-h", PG_SOCKET_DIR, "-p", str(self.port), "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-qAt"]  # fmt: skip
        return self.run_in_tree(psql, input_text=sql).stdout

    def query(self, sql: str, params: SqlParams = None) -> list[tuple]:
        """Run one statement as user mlflow (over 127.0.0.1); rows, or [] when it returns none."""
        import psycopg2  # the venv's, imported late so the CLI runs without it until needed

        with closing(psycopg2.connect(self.dsn("127.0.0.1"), connect_timeout=5)) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []


def moto_server_path() -> Path:
    beside_python = Path(sys.executable).parent / "moto_server"
    if beside_python.exists():
        return beside_python
    in_repo = REPO_ROOT / ".venv" / "bin" / "moto_server"
    if in_repo.exists():
        return in_repo
    raise HarnessError("moto_server missing: install requirements-dev.txt into .venv")


class MotoS3:
    """moto's S3 server on the slot's gateway (in memory: a restart loses every object)."""

    def __init__(self, state_dir: Path, slot: Slot) -> None:
        self.gateway = slot.gateway
        self.dir = state_dir / "moto"
        self.pid_file = self.dir / "moto.pid"
        self.log = state_dir / "logs" / "moto.log"
        self.port = slot.s3_port
        self.endpoint_url = f"http://{self.gateway}:{self.port}"
        self.bucket = S3_BUCKET

    def pid(self) -> int | None:
        if not self.pid_file.exists():
            return None
        pid = int(self.pid_file.read_text())
        return pid if process_alive(pid) else None

    def ensure(self) -> None:
        if self.pid() is None:
            self.start()
        self.client().create_bucket(Bucket=self.bucket)  # idempotent in moto (us-east-1)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(moto_server_path()), "-H", self.gateway, "-p", str(self.port)]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        wait_for(f"moto S3 on {self.gateway}:{self.port}", self._answers, 30)
        say(f"moto S3 listening on {self.endpoint_url}")

    def _answers(self) -> bool:
        if self.pid() is None:
            raise HarnessError(f"moto_server exited; see {self.log}")
        try:
            self.client().list_buckets()
        except Exception:  # any failure means "not ready yet"
            return False
        return True

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for("moto to exit", lambda: self.pid() is None, 10)
            except HarnessError:
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def client(self) -> Any:
        import boto3  # the venv's

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name=S3_REGION,
        )

    def list_objects(self, prefix: str = "") -> list[str]:
        """Keys in the bucket under `prefix` (all pages)."""
        pages = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
