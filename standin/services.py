"""The services the hosts use: a dedicated PostgreSQL cluster and a moto S3 server.

Both listen on the slot's bridge address (10.77.N.1) so the hosts reach them like RDS and S3;
PostgreSQL also listens on 127.0.0.1 for the tests. Ports are the slot's (55432 and 55900 in
slot 0, +10 per slot). Their files live in the state dir.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import signal
import string
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from . import deps
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
# mlflow-aws test harness: the superuser only over the socket, mlflow by password.
local all postgres peer
host {PG_DB} {PG_USER} 127.0.0.1/32 scram-sha-256
host {PG_DB} {PG_USER} {slot.subnet} scram-sha-256
"""


def random_password(length: int = 32) -> str:
    """Letters and digits only: safe inside a DSN URL without quoting."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# Where a cluster goes when user postgres cannot traverse the state dir's parents (a checkout
# under /root or in a `mktemp -d` directory): keyed by the state dir, so `down` finds it again.
OUTSIDE_DIR = Path("/var/tmp/mlflow-aws-testhosts")  # noqa: S108 (root-owned, fixed on purpose)


def postgres_dir(state_dir: Path) -> Path:
    state_dir = state_dir.resolve()
    if all(parent.stat().st_mode & 0o001 for parent in state_dir.parents if parent.exists()):
        return state_dir / "postgres"
    key = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return OUTSIDE_DIR / key / "postgres"


class Postgres:
    """A PostgreSQL cluster of its own (initdb/pg_ctl as user postgres), not the system one."""

    def __init__(self, state_dir: Path, slot: Slot) -> None:
        self.slot = slot
        self.dir = postgres_dir(state_dir)
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        # pg_ctl opens the log as user postgres: beside the cluster when it is outside.
        inside = self.dir.parent == state_dir.resolve()
        self.log = (state_dir / "logs" if inside else self.dir) / "postgres.log"
        self.password_file = self.dir / "mlflow.password"
        self.port = slot.pg_port

    @property
    def bindir(self) -> Path:
        found = deps.postgres_bindir()
        if found is None:
            raise HarnessError("PostgreSQL server binaries missing (Debian package postgresql)")
        return found

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def dsn(self, host: str | None = None) -> str:
        host = host or self.slot.gateway
        return f"postgresql://{PG_USER}:{self.password}@{host}:{self.port}/{PG_DB}"

    def _as_postgres(self, argv: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess:
        return run(["runuser", "-u", "postgres", "--", *argv], cwd=self.dir, **kwargs)

    def ensure(self) -> None:
        """Create the cluster on first use, then make sure it runs."""
        if not (self.data / "PG_VERSION").exists():
            self._init()
        self.start()

    def _init(self) -> None:
        say(f"creating PostgreSQL cluster in {self.data}")
        entry = pwd.getpwnam("postgres")
        for directory in (self.dir, self.socket_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        os.chown(self.log, entry.pw_uid, entry.pw_gid)
        if self._as_postgres(["test", "-w", self.dir], check=False).returncode != 0:
            raise HarnessError(
                f"user postgres cannot reach {self.dir}: choose a --state-dir whose parents "
                "are world-traversable (not under /root)"
            )
        self._as_postgres(
            [self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--encoding=UTF8",
             "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"],
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(pg_conf(self.slot) + f"unix_socket_directories = '{self.socket_dir}'\n")
        (self.data / "pg_hba.conf").write_text(pg_hba(self.slot))
        self.password_file.write_text(random_password() + "\n")
        self.password_file.chmod(0o600)
        self.start()
        # The password goes through stdin, never a command line (process listings).
        self.admin_sql(
            f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{self.password}';\n"
            f"CREATE DATABASE {PG_DB} OWNER {PG_USER};\n"
        )

    def start(self) -> None:
        if self.is_running():
            return
        self._as_postgres(
            [self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"],
            timeout=90,
        )
        say(f"PostgreSQL listening on {self.slot.gateway}:{self.port} and 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Fast shutdown (as in a DB outage; clients are disconnected)."""
        if self.is_running():
            self._as_postgres(
                [self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"], timeout=90
            )

    def is_running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = self._as_postgres([self.bindir / "pg_ctl", "-D", self.data, "status"], check=False)
        return status.returncode == 0

    def admin_sql(self, sql: str) -> str:
        """Run SQL as the superuser over the unix socket (psql reads it from stdin)."""
        psql = [self.bindir / "psql", "-h", self.socket_dir, "-p", str(self.port), "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-qAt"]  # fmt: skip
        return self._as_postgres(psql, input_text=sql).stdout

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
