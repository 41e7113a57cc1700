"""MLflow's PostgreSQL database, for the role `mlflow` and the MLflow unit.

Runs as the server's user with the server's environment file (through `systemd-run`, or as the
unit's ExecStartPre): MLFLOW_BACKEND_STORE_URI (a URL without password), PGPASSWORD (read by
libpq, so the password is never on a command line), AWS_* and MLFLOW_S3_ENDPOINT_URL. It uses
only the standard library plus psycopg2 and boto3 from MLflow's virtualenv.

    python mlflow_db.py wait --timeout 80
        waits until the database accepts connections (before MLflow starts: MLflow's own
        retries back off exponentially, up to ~50 s between attempts)
    python mlflow_db.py check
        {"server_major": 17, "has_schema": true, "revision": "1b5f0d9ad7c1", "pg_dump_major": 16,
         "head": "1b5f0d9ad7c1", "needs_upgrade": false}
    python mlflow_db.py dump --destination s3://bucket/backups --label host-3.16.0-to-3.17.2
        {"backup": "s3://bucket/backups/...pgdump", "bytes": 12345, ...}

`dump` streams `pg_dump --format=custom` (compressed) straight into S3; a failed pg_dump aborts
the upload, so a backup object that exists is a complete dump. Errors are one line on stderr
(exit status 1) naming what to fix.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlsplit

PG_DUMP_GLOB = "/usr/lib/postgresql/*/bin/pg_dump"
# MLflow's schema exists once `mlflow db upgrade` ran at least once.
SCHEMA_TABLE = "alembic_version"
REVISION_LINE = re.compile(r"""^revision\s*=\s*["']([0-9a-z_]+)["']""", re.MULTILINE)
# down_revision is None (the first), a string, or a tuple of strings (a merge).
DOWN_REVISION_LINE = re.compile(r"""(?:^down_revision\s*=\s*\(?|,)\s*["']([0-9a-z_]+)["']""", re.M)


class BackupError(Exception):
    """What went wrong and what to do about it, in one line."""


@dataclass(frozen=True)
class Database:
    """Where the database is; the password stays in PGPASSWORD."""

    host: str
    port: int
    user: str
    name: str

    @classmethod
    def from_url(cls, url: str) -> Database:
        """From MLflow's backend store URI, e.g. postgresql+psycopg2://mlflow@db:5432/mlflow."""
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgres") or not parts.hostname:
            raise BackupError(
                "MLFLOW_BACKEND_STORE_URI is not a PostgreSQL URL: only PostgreSQL is backed up"
            )
        if parts.password:
            raise BackupError("MLFLOW_BACKEND_STORE_URI must not carry the password (PGPASSWORD)")
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username or ""),
            name=unquote(parts.path.lstrip("/")),
        )

    def pg_dump_argv(self, pg_dump: str, lock_wait_timeout: str) -> list[str]:
        return [
            pg_dump,
            "--format=custom",
            "--compress=6",
            "--no-owner",
            f"--lock-wait-timeout={lock_wait_timeout}",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--username={self.user}",
            f"--dbname={self.name}",
        ]


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BackupError(f"backup destination {url!r} is not an s3://bucket/prefix URL")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def backup_name(label: str, now: float | None = None) -> str:
    """<UTC time>-<label>.pgdump: sorts by time; the label says which host and versions."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "mlflow"
    return f"{stamp}-{safe}.pgdump"


def pg_dump_candidates(pattern: str = PG_DUMP_GLOB) -> dict[int, str]:
    """Installed pg_dump binaries by major version (Debian's layout, any distribution)."""
    found = {}
    for path in glob.glob(pattern):
        major = path.split("/")[-3]
        if major.isdigit():
            found[int(major)] = path
    return found


def choose_pg_dump(server_major: int, candidates: dict[int, str]) -> str:
    """The newest pg_dump; it must be at least the server's major version."""
    if not candidates:
        raise BackupError("pg_dump is not installed: install the postgresql-client package")
    newest = max(candidates)
    if newest < server_major:
        raise BackupError(
            f"pg_dump {newest} cannot dump a PostgreSQL {server_major} server: install "
            f"postgresql-client-{server_major} (the role does when it finds the server newer)"
        )
    return candidates[newest]


def connect(database: Database, timeout: int = 10) -> Any:
    import psycopg2  # MLflow's virtualenv has it; imported here so the unit tests need none

    try:
        return psycopg2.connect(
            host=database.host,
            port=database.port,
            user=database.user,
            dbname=database.name,
            connect_timeout=timeout,
        )
    except psycopg2.OperationalError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
        raise BackupError(
            f"cannot connect to the database {database.host}:{database.port}: {first_line}"
        ) from None


def wait_for(database: Database, timeout: float, interval: float = 1.0) -> float:
    """Seconds until the database accepted a connection; BackupError after `timeout`."""
    started = time.monotonic()
    last_report = -1e9
    while True:
        try:
            connect(database, timeout=3).close()
            return time.monotonic() - started
        except BackupError as error:
            waited = time.monotonic() - started
            if waited >= timeout:
                raise BackupError(f"{error} (gave up after {waited:.0f} s)") from None
            if waited - last_report >= 10:  # one line every 10 s in the journal
                print(f"waiting for the database: {error}", file=sys.stderr, flush=True)
                last_report = waited
        time.sleep(interval)


def server_facts(database: Database) -> dict[str, Any]:
    """Server major version, whether MLflow's schema exists, and its revision (None if not)."""
    connection = connect(database)
    revision = None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version_num")
            version_num = int(cursor.fetchone()[0])
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (SCHEMA_TABLE,))
            has_schema = bool(cursor.fetchone()[0])
            if has_schema:
                cursor.execute(f"SELECT version_num FROM {SCHEMA_TABLE}")  # noqa: S608 constant
                row = cursor.fetchone()
                revision = row[0] if row else None
    finally:
        connection.close()
    return {"server_major": version_num // 10000, "has_schema": has_schema, "revision": revision}


def release_head(versions_dir: str | None = None) -> str:
    """The schema revision this virtualenv's MLflow serves: its newest migration.

    Read from the migration scripts (alembic's `revision` / `down_revision` lines) instead of
    importing MLflow, which takes seconds: the check runs on every playbook run.
    """
    if versions_dir is None:
        spec = importlib.util.find_spec("mlflow")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise BackupError("MLflow is not installed in this virtualenv")
        versions_dir = os.path.join(
            next(iter(spec.submodule_search_locations)), "store", "db_migrations", "versions"
        )
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in glob.glob(os.path.join(versions_dir, "*.py")):
        with open(path, encoding="utf-8") as script:
            text = script.read()
        if revision := REVISION_LINE.search(text):
            revisions.add(revision.group(1))
            parents.update(DOWN_REVISION_LINE.findall(text))
    heads = revisions - parents
    if len(heads) != 1:
        raise BackupError(f"expected one newest migration in {versions_dir}, found {sorted(heads)}")
    return heads.pop()


class CheckedStream:
    """pg_dump's stdout for boto3: EOF only after pg_dump exited 0, else an error.

    boto3 aborts the (multipart) upload when read() raises, so a failed dump leaves no object.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        assert process.stdout is not None
        self.stdout: IO[bytes] = process.stdout
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stdout.read(size)
        if data:
            self.bytes += len(data)
            return data
        status = self.process.wait()
        if status != 0:
            stderr = (
                self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            )
            last = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
            raise BackupError(f"pg_dump failed (exit {status}): {last}")
        return b""


def dump(
    database: Database,
    destination: S3Location,
    label: str,
    lock_wait_timeout: str,
    s3_client: Any,
    pg_dump: str,
) -> dict[str, Any]:
    key = destination.key(backup_name(label))
    process = subprocess.Popen(
        database.pg_dump_argv(pg_dump, lock_wait_timeout),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stream = CheckedStream(process)
    try:
        s3_client.upload_fileobj(stream, destination.bucket, key)
    except BackupError:
        raise
    except Exception as error:  # boto3 and botocore raise many kinds; name the one we got
        process.kill()
        process.wait()
        raise BackupError(
            f"cannot upload the backup to s3://{destination.bucket}/{key}: "
            f"{type(error).__name__}: {error}"
        ) from None
    size = s3_client.head_object(Bucket=destination.bucket, Key=key)["ContentLength"]
    return {"backup": f"s3://{destination.bucket}/{key}", "bytes": size}


def s3_client() -> Any:
    import boto3  # from MLflow's virtualenv

    # MLflow reads MLFLOW_S3_ENDPOINT_URL for S3-compatible stores; boto3 does not.
    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wait_parser = commands.add_parser("wait", help="wait until the database accepts connections")
    wait_parser.add_argument("--timeout", type=float, default=80, help="seconds")
    commands.add_parser(
        "check", help="print the server's major version, pg_dump's, and the schema revisions"
    )
    dump_parser = commands.add_parser("dump", help="pg_dump the database to S3")
    dump_parser.add_argument("--destination", required=True, help="s3://bucket/prefix")
    dump_parser.add_argument("--label", required=True, help="added to the object's name")
    dump_parser.add_argument("--lock-wait-timeout", default="120s")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        database = Database.from_url(os.environ.get("MLFLOW_BACKEND_STORE_URI", ""))
        if args.command == "wait":
            waited = wait_for(database, args.timeout)
            if waited >= 1:
                print(f"the database answers (after {waited:.0f} s)", file=sys.stderr)
            return 0
        facts = server_facts(database)
        candidates = pg_dump_candidates()
        facts["pg_dump_major"] = max(candidates, default=0)
        if args.command == "check":
            head = release_head()
            result = {**facts, "head": head, "needs_upgrade": facts["revision"] != head}
        elif not facts["has_schema"]:
            result = {**facts, "backup": None, "reason": "no MLflow schema yet: nothing to back up"}
        else:
            pg_dump = choose_pg_dump(facts["server_major"], candidates)
            location = S3Location.parse(args.destination)
            result = {
                **facts,
                **dump(
                    database, location, args.label, args.lock_wait_timeout, s3_client(), pg_dump
                ),
            }
    except BackupError as error:
        print(f"mlflow_db: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
