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

    python mlflow_db.py backups --destination s3://bucket/backups [--resolve latest|KEY] [--presign]
        lists the backups (the operator's machine: its own AWS credentials; the server's role
        may not read backups), or finds one (and signs a one-hour download URL for the host)
    python mlflow_db.py fetch --output FILE          (the signed URL on stdin)
    python mlflow_db.py inspect --file FILE
        {"revision": "1b5f0d9ad7c1", "known": true, "head": "1b5f0d9ad7c1", ...}
    python mlflow_db.py restore --file FILE
        replaces every object the database user owns with the dump's, in ONE transaction
    python mlflow_db.py login --prepare mlflow_b | --retire mlflow_a   (JSON secrets on stdin)
        `make rotate-db`: the login roles MLflow uses, managed with the master user
    python mlflow_db.py gc-hold --older-than 30d
        before `mlflow gc` (the gc unit's ExecStartPre): a deleted experiment waits until
        every run in it was deleted longer ago than that, so gc never fails on it

`dump` streams `pg_dump --format=custom` (compressed) straight into S3; a failed pg_dump aborts
the upload, so a backup object that exists is a complete dump. `restore` feeds
`DROP OWNED BY CURRENT_USER` and `pg_restore`'s script to `psql --single-transaction`: a failed
restore leaves the database as it was; a successful one leaves exactly the dump's tables (also
none of a newer release's, so its alembic revision is the truth). Errors are one line on stderr
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

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin/{tool}"
PG_DUMP_GLOB = PG_BIN_GLOB.format(tool="pg_dump")
# A signed download URL lives this long (seconds): the restore fetches it at once.
PRESIGN_SECONDS = 3600
BACKUP_SUFFIX = ".pgdump"
# `make rotate-db`: MLflow logs in as one of two login roles, members of an owner role that owns
# MLflow's objects (each login's sessions act as the owner: ALTER ROLE ... SET role).
OWNER_ROLE = "mlflow_owner"
LOGIN_ROLES = ("mlflow_a", "mlflow_b")
# The first rotation hands the tables over while MLflow serves: see hand_over_tables.
HANDOVER_LOCK_WAIT = "100ms"
HANDOVER_ATTEMPTS = 150
# MLflow's schema exists once `mlflow db upgrade` ran at least once.
SCHEMA_TABLE = "alembic_version"
REVISION_LINE = re.compile(r"""^revision\s*=\s*["']([0-9a-z_]+)["']""", re.MULTILINE)
# down_revision is None (the first), a string, or a tuple of strings (a merge).
DOWN_REVISION_LINE = re.compile(r"""(?:^down_revision\s*=\s*\(?|,)\s*["']([0-9a-z_]+)["']""", re.M)


# mlflow gc --older-than's format (#d#h#m#s; the role checks it before it gets here).
DURATION = re.compile(r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# gc-hold also looks at experiments that become old this much later: mlflow gc reads its clock
# a moment after gc-hold.
HOLD_MARGIN_MS = 3600 * 1000


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
    """Installed pg_dump (or another client tool) binaries by major version (Debian's layout)."""
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
            f"postgresql-client-{server_major} (the role stops before this, saying how)"
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
    return release_revisions(versions_dir)[1]


def release_revisions(versions_dir: str | None = None) -> tuple[set[str], str]:
    """Every schema revision this virtualenv's MLflow knows, and its newest."""
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
    return revisions, heads.pop()


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


# ---------------------------------------------------------------- listing, fetching, restoring


def list_backups(s3: Any, location: S3Location) -> list[dict[str, Any]]:
    """The dumps under the prefix, oldest first (names start with their UTC time)."""
    prefix = f"{location.prefix}/" if location.prefix else ""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith(BACKUP_SUFFIX):
                found.append(
                    {
                        "key": item["Key"],
                        "url": f"s3://{location.bucket}/{item['Key']}",
                        "bytes": item["Size"],
                        "date": item["LastModified"].strftime("%Y-%m-%d %H:%M:%S UTC"),
                    }
                )
    return sorted(found, key=lambda backup: backup["key"])


def backup_key(location: S3Location, wanted: str) -> str:
    """The object key from s3://bucket/backups/NAME, backups/NAME or NAME."""
    if wanted.startswith("s3://"):
        parts = urlsplit(wanted)
        if parts.netloc != location.bucket:
            raise BackupError(
                f"backup {wanted} is not in this stack's bucket s3://{location.bucket}"
            )
        return parts.path.lstrip("/")
    if location.prefix and not wanted.startswith(f"{location.prefix}/"):
        return location.key(wanted)
    return wanted


def resolve_backup(s3: Any, location: S3Location, wanted: str) -> dict[str, Any]:
    """The backup named by `wanted` ('latest' or a key), or an error saying how to list them."""
    backups = list_backups(s3, location)
    where = f"s3://{location.bucket}/{location.prefix}"
    if wanted == "latest":
        if not backups:
            raise BackupError(f"there is no backup in {where}/ yet: take one with `make backup`")
        return backups[-1]
    key = backup_key(location, wanted)
    for backup in backups:
        if backup["key"] == key:
            return backup
    raise BackupError(
        f"backup {wanted!r} not found in {where}/ ({len(backups)} backups there): "
        "`make backups` lists them (BACKUP=<key>, or BACKUP=latest)"
    )


def presign(s3: Any, location: S3Location, key: str) -> str:
    return s3.generate_presigned_url(
        "get_object", Params={"Bucket": location.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
    )


def fetch(url: str, output: str) -> int:
    """Download a signed URL to `output` (0600); the number of bytes."""
    import shutil
    import urllib.request

    if not url.startswith(("https://", "http://")):
        raise BackupError("fetch expects the signed backup URL on stdin")
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with urllib.request.urlopen(url, timeout=60) as answer, os.fdopen(descriptor, "wb") as out:  # noqa: S310 (http(s) only, checked above)
            shutil.copyfileobj(answer, out, 1 << 20)
    except OSError as error:  # URLError, HTTPError and disk errors are OSErrors
        raise BackupError(f"cannot download the backup: {error}") from None
    return os.path.getsize(output)


def pg_tool(tool: str, server_major: int) -> str:
    """The newest installed client tool (pg_restore, psql); at least the server's version."""
    candidates = pg_dump_candidates(PG_BIN_GLOB.format(tool=tool))
    if not candidates:
        raise BackupError(f"{tool} is not installed: install the postgresql-client package")
    newest = max(candidates)
    if newest < server_major:
        raise BackupError(
            f"{tool} {newest} is older than the PostgreSQL {server_major} server: install "
            f"postgresql-client-{server_major}"
        )
    return candidates[newest]


def dump_revision(pg_restore: str, path: str) -> str | None:
    """The alembic revision stored in a dump (its alembic_version row), None if it has none."""
    listing = subprocess.run(
        [pg_restore, "--list", path], capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        last = (listing.stderr.strip().splitlines() or ["no error output"])[-1]
        raise BackupError(f"{path} is not a pg_dump archive pg_restore can read: {last}")
    data = subprocess.run(
        [pg_restore, "--data-only", f"--table={SCHEMA_TABLE}", "--file=-", path],
        capture_output=True,
        text=True,
        check=True,
    )
    # COPY public.alembic_version (version_num) FROM stdin;\n<revision>\n\\.
    match = re.search(
        r"^COPY [^\n]*alembic_version[^\n]*FROM stdin;\n([0-9a-z_]+)\n", data.stdout, re.M
    )
    return match.group(1) if match else None


def inspect(path: str, server_major: int) -> dict[str, Any]:
    revision = dump_revision(pg_tool("pg_restore", server_major), path)
    revisions, head = release_revisions()
    return {
        "file": path,
        "bytes": os.path.getsize(path),
        "revision": revision,
        "known": revision in revisions,
        "head": head,
    }


def owners_of_mlflow(database: Database) -> list[str]:
    """CURRENT_USER, and the owner role of make rotate-db when this user may act as it."""
    connection = connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_roles"
                " WHERE rolname = %s AND pg_has_role(current_user, oid, 'MEMBER')",
                (OWNER_ROLE,),
            )
            member = bool(cursor.fetchone())
    finally:
        connection.close()
    return ["CURRENT_USER", OWNER_ROLE] if member else ["CURRENT_USER"]


def restore(database: Database, path: str, server_major: int) -> dict[str, Any]:
    """Replace what the database user owns by the dump, atomically (psql -1)."""
    pg_restore = pg_tool("pg_restore", server_major)
    psql = pg_tool("psql", server_major)
    started = time.monotonic()
    script = subprocess.Popen(
        [pg_restore, "--no-owner", "--no-privileges", "--no-comments", "--file=-", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    applied = subprocess.run(
        [
            psql,
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            f"--host={database.host}",
            f"--port={database.port}",
            f"--username={database.user}",
            f"--dbname={database.name}",
            # MLflow's objects are the user's (or the owner role's, see make rotate-db): the
            # dump's replace them all, and nothing of a newer schema is left behind.
            f"--command=DROP OWNED BY {', '.join(owners_of_mlflow(database))}",
            "--file=-",
        ],
        stdin=script.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert script.stdout is not None
    assert script.stderr is not None
    script.stdout.close()
    script_errors = script.stderr.read().decode(errors="replace").strip()
    if script.wait() != 0:
        raise BackupError(
            f"pg_restore cannot read {path}: {(script_errors.splitlines() or ['?'])[-1]}; "
            "the database is unchanged"
        )
    if applied.returncode != 0:
        last = (applied.stderr.strip().splitlines() or ["no error output"])[-1]
        raise BackupError(f"the restore failed and was rolled back (unchanged): {last}")
    return {"restored": path, "seconds": round(time.monotonic() - started, 1)}


# ---------------------------------------------------------------- login roles (make rotate-db)


def master_connection(database: Database, user: str, password: str) -> Any:
    import psycopg2

    try:
        return psycopg2.connect(
            host=database.host,
            port=database.port,
            user=user,
            password=password,
            dbname=database.name,
            connect_timeout=10,
        )
    except psycopg2.OperationalError as error:
        first_line = (str(error).strip().splitlines() or ["no answer"])[0]
        raise BackupError(
            f"cannot connect to the database {database.host}:{database.port} as the stack's "
            f"master user {user}: {first_line}"
        ) from None


def prepare_login(database: Database, master: dict[str, str], role: str) -> dict[str, Any]:
    """Give `role` the new password, make it a member acting as the owner role (created, and
    given the master user's objects, the first time); refuse while a host still uses `role`."""
    from psycopg2 import sql

    if role not in LOGIN_ROLES:
        raise BackupError(f"the login role must be one of {', '.join(LOGIN_ROLES)}, not {role!r}")
    owner, login, master_role = map(sql.Identifier, (OWNER_ROLE, role, master["master_user"]))
    connection = master_connection(database, master["master_user"], master["master_password"])
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
            sessions = cursor.fetchone()[0]
            if sessions:
                raise BackupError(
                    f"{role} still has {sessions} database sessions: a host still uses it (did "
                    "an earlier make rotate-db stop half way? `make configure` finishes it); "
                    "nothing was changed"
                )
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER_ROLE,))
            if not cursor.fetchone():
                cursor.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
            cursor.execute(sql.SQL("GRANT {} TO {}").format(owner, master_role))
            # The owner of a table must be allowed to create in its schema. Since PostgreSQL 15
            # `public` belongs to pg_database_owner (the master user, on RDS too) and PUBLIC may
            # no longer create there: without this, the REASSIGN below and MLflow's later
            # migrations (run as the owner role) are refused.
            cursor.execute(
                sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(
                    sql.Identifier(current_schema(cursor)), owner
                )
            )
        hand_over_tables(connection, master["master_user"])
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(login), (master["password"],)
            )
            cursor.execute(sql.SQL("GRANT {} TO {}").format(owner, login))
            cursor.execute(
                sql.SQL("ALTER ROLE {} SET role = {}").format(login, sql.Literal(OWNER_ROLE))
            )
    finally:
        connection.close()
    return {"login": role, "owner": OWNER_ROLE}


def hand_over_tables(connection: Any, master_user: str) -> None:
    """MLflow's tables, created by the master user, move to the owner role (the first rotation).

    MLflow may be serving as the master user meanwhile. REASSIGN takes each table's exclusive lock
    in turn, and a request holding a shared lock on one table while it waits for another would
    deadlock with it: so wait at most HANDOVER_LOCK_WAIT for each lock and start over. A request
    then waits that long at most, well below PostgreSQL's deadlock check (1 s), and never fails.
    """
    from psycopg2 import errors, sql

    for _attempt in range(HANDOVER_ATTEMPTS):
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_class"
                    " WHERE relnamespace = current_schema()::regnamespace"
                    " AND relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)",
                    (master_user,),
                )
                if not cursor.fetchone()[0]:
                    return  # handed over by an earlier rotation: no lock taken
                cursor.execute("SET LOCAL lock_timeout = %s", (HANDOVER_LOCK_WAIT,))
                cursor.execute(
                    sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                        sql.Identifier(master_user), sql.Identifier(OWNER_ROLE)
                    )
                )
            return
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            time.sleep(0.2)
    raise BackupError(
        f"MLflow's tables stayed busy through {HANDOVER_ATTEMPTS} tries to hand them to "
        f"{OWNER_ROLE}; nothing was changed. Run it again when the server is less busy"
    )


def current_schema(cursor: Any) -> str:
    """Where MLflow's tables are (the master user's search_path: `public`)."""
    cursor.execute("SELECT current_schema()")
    row = cursor.fetchone()
    if not row or not row[0]:
        raise BackupError("the master user's search_path names no existing schema")
    return str(row[0])


def retire_login(database: Database, master: dict[str, str], role: str) -> dict[str, Any]:
    """The previous login can no longer log in (sessions still open end on their own)."""
    from psycopg2 import sql

    if role not in LOGIN_ROLES:
        raise BackupError(f"the login role must be one of {', '.join(LOGIN_ROLES)}, not {role!r}")
    connection = master_connection(database, master["master_user"], master["master_password"])
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(role))
            )
    finally:
        connection.close()
    return {"retired": role}


# ---------------------------------------------------------------- mlflow gc's timer (gc-hold)


def duration_ms(text: str) -> int:
    """Milliseconds of a #d#h#m#s duration, as mlflow gc --older-than reads it."""
    match = DURATION.match(text)
    if not match:
        raise BackupError(f"--older-than {text!r} is not a duration like 30d, 12h or 1d12h")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000


# Deleted experiments that are (or within the margin become) old enough for `mlflow gc
# --older-than`, and still hold a run that is live, or deleted without a time (runs deleted
# before MLflow recorded it), or deleted less long ago. mlflow gc would purge such an experiment
# with all its runs, so it raises "Run ... is not older than the required age" instead, before
# the experiments and after some runs: every tick, until that run is old enough (forever for a
# run without deleted_time), and nothing else is collected meanwhile.
HELD_EXPERIMENTS = """
SELECT e.experiment_id, e.name, e.last_update_time,
       count(*) FILTER (WHERE r.lifecycle_stage <> 'deleted') AS live,
       count(*) FILTER (WHERE r.lifecycle_stage = 'deleted' AND r.deleted_time IS NULL),
       max(r.deleted_time) FILTER (WHERE r.lifecycle_stage = 'deleted')
FROM experiments e JOIN runs r ON r.experiment_id = e.experiment_id
WHERE e.lifecycle_stage = 'deleted' AND e.last_update_time < %(soon_old)s
GROUP BY e.experiment_id, e.name, e.last_update_time
HAVING bool_or(r.lifecycle_stage <> 'deleted' OR r.deleted_time IS NULL
               OR r.deleted_time > %(old)s)
"""


def hold_experiments(
    database: Database, older_than: str, now_ms: int | None = None
) -> dict[str, Any]:
    """Make a deleted experiment count as deleted when its last run was: gc purges it (with
    its runs) one period after that, never a run deleted less long ago, nor a live one.

    Its last_update_time (what gc's age filter reads) becomes the latest deleted_time of its
    runs; a deleted run without deleted_time gets now (its period starts); an experiment with
    a live run (restored after the experiment was deleted) waits from now, again at each tick
    while the run lives. Everything else is left to mlflow gc as it is.
    """
    period = duration_ms(older_than)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    bounds = {"old": now - period, "soon_old": now - period + HOLD_MARGIN_MS}
    held = []
    connection = connect(database)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(HELD_EXPERIMENTS, bounds)
            for experiment_id, name, deleted, live, undated, latest in cursor.fetchall():
                if undated:
                    cursor.execute(
                        "UPDATE runs SET deleted_time = %s WHERE experiment_id = %s"
                        " AND lifecycle_stage = 'deleted' AND deleted_time IS NULL",
                        (now, experiment_id),
                    )
                counted_from = now if live or undated else max(latest, deleted or 0)
                cursor.execute(
                    "UPDATE experiments SET last_update_time = %s WHERE experiment_id = %s",
                    (counted_from, experiment_id),
                )
                reason = (
                    f"{live} live run(s)" if live else
                    f"{undated} run(s) deleted without a time" if undated else
                    "a run deleted since"
                )  # fmt: skip
                held.append(
                    {
                        "experiment_id": str(experiment_id),
                        "name": name,
                        "deleted": iso_time(deleted),
                        "reason": reason,
                        "purged_after": iso_time(counted_from + period),
                    }
                )
    finally:
        connection.close()
    for experiment in held:
        print(
            f"gc-hold: deleted experiment {experiment['experiment_id']} ({experiment['name']},"
            f" deleted {experiment['deleted']}) holds {experiment['reason']}: it waits, purged"
            f" after {experiment['purged_after']} at the earliest",
            file=sys.stderr,
        )
    return {"held": held}


def iso_time(millis: int | None) -> str:
    if millis is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(millis / 1000))


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
    list_parser = commands.add_parser("backups", help="list the backups, or find one")
    list_parser.add_argument("--destination", required=True, help="s3://bucket/prefix")
    list_parser.add_argument("--resolve", metavar="KEY", help="'latest' or a key: just that one")
    list_parser.add_argument("--presign", action="store_true", help="add a signed download URL")
    fetch_parser = commands.add_parser("fetch", help="download the signed URL on stdin")
    fetch_parser.add_argument("--output", required=True)
    for name, text in (("inspect", "the schema revision of a dump"), ("restore", "restore a dump")):
        commands.add_parser(name, help=text).add_argument("--file", required=True)
    login_parser = commands.add_parser(
        "login", help="make rotate-db: master credentials and the new password as JSON on stdin"
    )
    action = login_parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--prepare", metavar="ROLE", help="give ROLE the new password")
    action.add_argument("--retire", metavar="ROLE", help="ROLE can no longer log in")
    hold_parser = commands.add_parser(
        "gc-hold", help="before mlflow gc: deleted experiments with younger runs wait"
    )
    hold_parser.add_argument("--older-than", required=True, help="mlflow gc's, e.g. 30d")
    return parser.parse_args(argv)


def run_s3_command(args: argparse.Namespace) -> dict[str, Any]:
    """backups: needs no database, only S3 (run on the operator's machine)."""
    location = S3Location.parse(args.destination)
    client = s3_client()
    if not args.resolve:
        return {"backups": list_backups(client, location)}
    found = resolve_backup(client, location, args.resolve)
    if args.presign:
        found["download_url"] = presign(client, location, found["key"])
    return found


def run_database_command(args: argparse.Namespace) -> dict[str, Any] | None:
    database = Database.from_url(os.environ.get("MLFLOW_BACKEND_STORE_URI", ""))
    if args.command == "wait":
        waited = wait_for(database, args.timeout)
        if waited >= 1:
            print(f"the database answers (after {waited:.0f} s)", file=sys.stderr)
        return None
    if args.command == "gc-hold":
        duration_ms(args.older_than)  # a bad duration: an error before connecting
        return hold_experiments(database, args.older_than)
    facts = server_facts(database)
    if args.command == "inspect":
        return inspect(args.file, facts["server_major"])
    if args.command == "restore":
        return {**restore(database, args.file, facts["server_major"]), **server_facts(database)}
    candidates = pg_dump_candidates()
    facts["pg_dump_major"] = max(candidates, default=0)
    if args.command == "check":
        head = release_head()
        return {**facts, "head": head, "needs_upgrade": facts["revision"] != head}
    if not facts["has_schema"]:
        return {**facts, "backup": None, "reason": "no MLflow schema yet: nothing to back up"}
    pg_dump = choose_pg_dump(facts["server_major"], candidates)
    location = S3Location.parse(args.destination)
    return {
        **facts,
        **dump(database, location, args.label, args.lock_wait_timeout, s3_client(), pg_dump),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "backups":
            result = run_s3_command(args)
        elif args.command == "login":
            database = Database.from_url(os.environ.get("MLFLOW_BACKEND_STORE_URI", ""))
            secrets = json.loads(sys.stdin.readline())
            result = (
                prepare_login(database, secrets, args.prepare)
                if args.prepare
                else retire_login(database, secrets, args.retire)
            )
        elif args.command == "fetch":
            result = {
                "file": args.output,
                "bytes": fetch(sys.stdin.readline().strip(), args.output),
            }
        else:
            result = run_database_command(args)
    except BackupError as error:
        print(f"mlflow_db: {error}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
