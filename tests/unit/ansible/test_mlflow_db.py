"""The database helper of the mlflow role: wait, check, backup (files/mlflow_db.py)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.ansible.source_file import load

backup = load("mlflow_db", "ansible/roles/mlflow/files/mlflow_db.py")
URI = "postgresql+psycopg2://mlflow@db.internal:5433/mlflow"


def test_database_from_the_password_less_backend_uri() -> None:
    database = backup.Database.from_url(URI)
    assert database == backup.Database("db.internal", 5433, "mlflow", "mlflow")
    assert backup.Database.from_url("postgresql://u%40x@h/d%2Fb").user == "u@x"
    assert backup.Database.from_url("postgresql://u@h/db").port == 5432


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "not a PostgreSQL URL"),
        ("sqlite:///mlflow.db", "not a PostgreSQL URL"),
        ("postgresql://mlflow:secret@db/mlflow", "must not carry the password"),
    ],
)
def test_database_refuses_other_urls(url: str, message: str) -> None:
    with pytest.raises(backup.BackupError, match=message) as info:
        backup.Database.from_url(url)
    assert "secret" not in str(info.value)


def test_pg_dump_command_has_no_password_and_is_compressed() -> None:
    argv = backup.Database.from_url(URI).pg_dump_argv("/usr/bin/pg_dump", "60s")
    assert argv[0] == "/usr/bin/pg_dump"
    assert "--format=custom" in argv
    assert "--compress=6" in argv
    assert "--lock-wait-timeout=60s" in argv
    assert {"--host=db.internal", "--port=5433", "--username=mlflow", "--dbname=mlflow"} <= set(
        argv
    )
    assert not [arg for arg in argv if "password" in arg.lower()]


def test_s3_destination_and_key() -> None:
    location = backup.S3Location.parse("s3://bucket-1/backups/")
    assert location == backup.S3Location("bucket-1", "backups")
    assert location.key("x.pgdump") == "backups/x.pgdump"
    assert backup.S3Location.parse("s3://bucket-1").key("x") == "x"
    for bad in ("/backups", "https://bucket/backups", "s3:///backups"):
        with pytest.raises(backup.BackupError, match="not an s3://bucket/prefix URL"):
            backup.S3Location.parse(bad)


def test_backup_name_sorts_by_time_and_is_key_safe() -> None:
    name = backup.backup_name("mlflow-test-1-mlflow-3.16.0-to-3.17.2", now=0)
    assert name == "19700101T000000Z-mlflow-test-1-mlflow-3.16.0-to-3.17.2.pgdump"
    assert backup.backup_name("a b/c", now=0) == "19700101T000000Z-a-b-c.pgdump"
    assert backup.backup_name("//", now=0) == "19700101T000000Z-mlflow.pgdump"


def test_newest_pg_dump_is_chosen_and_must_match_the_server(tmp_path: Path) -> None:
    for major in ("15", "17", "common"):
        binary = tmp_path / major / "bin" / "pg_dump"
        binary.parent.mkdir(parents=True)
        binary.touch()
    candidates = backup.pg_dump_candidates(str(tmp_path / "*" / "bin" / "pg_dump"))
    assert candidates == {
        15: str(tmp_path / "15/bin/pg_dump"),
        17: str(tmp_path / "17/bin/pg_dump"),
    }
    assert backup.choose_pg_dump(16, candidates) == candidates[17]
    assert backup.choose_pg_dump(17, candidates) == candidates[17]
    with pytest.raises(backup.BackupError, match="pg_dump 17 cannot dump a PostgreSQL 18 server"):
        backup.choose_pg_dump(18, candidates)
    with pytest.raises(backup.BackupError, match="install the postgresql-client package"):
        backup.choose_pg_dump(15, {})


def shell(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_stream_ends_only_when_pg_dump_succeeded() -> None:
    stream = backup.CheckedStream(shell("printf PGDMP-data"))
    assert stream.read(3) + stream.read() == b"PGDMP-data"
    assert stream.read() == b""
    assert stream.bytes == 10


def test_stream_raises_instead_of_eof_when_pg_dump_failed() -> None:
    stream = backup.CheckedStream(shell("printf partial; echo 'pg_dump: error: lock' >&2; exit 1"))
    assert stream.read(100) == b"partial"
    with pytest.raises(
        backup.BackupError, match=r"pg_dump failed \(exit 1\): pg_dump: error: lock"
    ):
        stream.read(100)


class FakeS3:
    """upload_fileobj reads the stream to the end, as boto3 does, then head_object."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def upload_fileobj(self, stream: Any, bucket: str, key: str) -> None:
        data = io.BytesIO()
        while chunk := stream.read(4):
            data.write(chunk)
        self.objects[(bucket, key)] = data.getvalue()

    def head_object(self, Bucket: str, Key: str) -> dict[str, int]:
        return {"ContentLength": len(self.objects[(Bucket, Key)])}


def fake_pg_dump(tmp_path: Path, script: str) -> str:
    path = tmp_path / "pg_dump"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_dump_uploads_a_complete_dump(tmp_path: Path) -> None:
    s3 = FakeS3()
    pg_dump = fake_pg_dump(tmp_path, 'printf "PGDMP %s" "$*"')
    result = backup.dump(
        backup.Database.from_url(URI),
        backup.S3Location.parse("s3://b/backups"),
        "host-1",
        "5s",
        s3,
        pg_dump,
    )
    ((bucket, key), data), *_ = s3.objects.items()
    assert bucket == "b"
    assert key.startswith("backups/")
    assert key.endswith("-host-1.pgdump")
    assert data.startswith(b"PGDMP --format=custom")
    assert result == {"backup": f"s3://b/{key}", "bytes": len(data)}


def test_dump_fails_without_an_object_when_pg_dump_fails(tmp_path: Path) -> None:
    s3 = FakeS3()
    pg_dump = fake_pg_dump(tmp_path, "printf PGDMP; echo 'connection refused' >&2; exit 1")
    with pytest.raises(backup.BackupError, match="connection refused"):
        backup.dump(
            backup.Database.from_url(URI), backup.S3Location("b", "backups"), "h", "5s", s3, pg_dump
        )
    assert s3.objects == {}


def test_main_reports_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:secret@db/mlflow")
    assert backup.main(["check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "mlflow_db: MLFLOW_BACKEND_STORE_URI must not carry the password (PGPASSWORD)\n"
    )


def test_main_skips_an_empty_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", URI)
    monkeypatch.setattr(
        backup, "server_facts", lambda database: {"server_major": 15, "has_schema": False}
    )
    monkeypatch.setattr(backup, "pg_dump_candidates", lambda: {15: "/x/15/bin/pg_dump"})
    assert backup.main(["dump", "--destination", "s3://b/backups", "--label", "h"]) == 0
    assert '"backup": null' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30d", 30 * 86400_000), ("12h", 12 * 3600_000), ("1d12h", 36 * 3600_000),
     ("90s", 90_000), ("1d2h3m4s", 93784_000)],
)  # fmt: skip
def test_gc_hold_reads_durations_as_mlflow_gc_does(text: str, ms: int) -> None:
    assert backup.duration_ms(text) == ms


def test_gc_hold_refuses_a_bad_duration_before_connecting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", URI)
    monkeypatch.setattr(backup, "connect", lambda database: pytest.fail("connected"))
    for bad in ("30", "d", "30days", "-1d", ""):
        assert backup.main(["gc-hold", f"--older-than={bad}"]) == 1
        assert "is not a duration like 30d" in capsys.readouterr().err


def test_wait_returns_once_the_database_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    class Connection:
        def close(self) -> None:
            pass

    def connect(database: object, timeout: int) -> Connection:
        attempts.append(timeout)
        if len(attempts) < 3:
            raise backup.BackupError("cannot connect to the database db:5432: refused")
        return Connection()

    monkeypatch.setattr(backup, "connect", connect)
    backup.wait_for(backup.Database.from_url(URI), timeout=10, interval=0)
    assert len(attempts) == 3


def test_wait_gives_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(database: object, timeout: int) -> None:
        raise backup.BackupError("cannot connect to the database db:5432: refused")

    monkeypatch.setattr(backup, "connect", refuse)
    with pytest.raises(backup.BackupError, match=r"refused \(gave up after 0 s\)"):
        backup.wait_for(backup.Database.from_url(URI), timeout=0.05, interval=0.01)


def write_migration(directory: Path, revision: str, down: str) -> None:
    (directory / f"{revision}_change.py").write_text(
        f'"""A migration."""\nrevision = "{revision}"\ndown_revision = {down}\n'
        "branch_labels = None\n"
    )


def test_release_head_is_the_revision_nothing_builds_on(tmp_path: Path) -> None:
    write_migration(tmp_path, "aaa111", "None")
    write_migration(tmp_path, "bbb222", '"aaa111"')
    write_migration(tmp_path, "ccc333", "'aaa111'")
    write_migration(tmp_path, "ddd444", '("bbb222", "ccc333")')  # a merge of two branches
    assert backup.release_head(str(tmp_path)) == "ddd444"


def test_release_head_refuses_two_heads(tmp_path: Path) -> None:
    write_migration(tmp_path, "aaa111", "None")
    write_migration(tmp_path, "bbb222", '"aaa111"')
    write_migration(tmp_path, "ccc333", '"aaa111"')
    with pytest.raises(backup.BackupError, match=r"found \['bbb222', 'ccc333'\]"):
        backup.release_head(str(tmp_path))


@pytest.mark.parametrize(("revision", "needs"), [(None, True), ("aaa111", True), ("bbb222", False)])
def test_check_says_whether_the_database_needs_the_release_schema(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    revision: str | None,
    needs: bool,
) -> None:
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", URI)
    facts = {"server_major": 17, "has_schema": revision is not None, "revision": revision}
    monkeypatch.setattr(backup, "server_facts", lambda database: facts)
    monkeypatch.setattr(backup, "pg_dump_candidates", lambda: {15: "/x/15/bin/pg_dump"})
    monkeypatch.setattr(backup, "release_head", lambda: "bbb222")
    assert backup.main(["check"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["head"] == "bbb222"
    assert out["revision"] == revision
    assert out["needs_upgrade"] is needs


# ----- listing, resolving and signing backups (the operator's machine) -----------------------


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A moto S3 bucket holding three dumps and an artifact, as the server leaves them."""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = backup.s3_client()
        s3.create_bucket(Bucket="bkt")
        for key in ("backups/20261201T020000Z-h1.pgdump", "backups/20261130T020000Z-h1.pgdump",
                    "backups/20261202T020000Z-h1.pgdump", "backups/notes.txt",
                    "mlflow-artifacts/1/r/artifacts/x.pgdump"):  # fmt: skip
            s3.put_object(Bucket="bkt", Key=key, Body=b"PGDMP")
        yield s3


def test_backups_are_listed_oldest_first(bucket: Any) -> None:
    found = backup.list_backups(bucket, backup.S3Location("bkt", "backups"))
    assert [item["key"] for item in found] == [
        "backups/20261130T020000Z-h1.pgdump",
        "backups/20261201T020000Z-h1.pgdump",
        "backups/20261202T020000Z-h1.pgdump",
    ]
    assert found[0]["url"] == "s3://bkt/backups/20261130T020000Z-h1.pgdump"
    assert found[0]["bytes"] == 5
    assert found[0]["date"].endswith(" UTC")


@pytest.mark.parametrize(
    "wanted",
    [
        "latest",
        "20261202T020000Z-h1.pgdump",
        "backups/20261202T020000Z-h1.pgdump",
        "s3://bkt/backups/20261202T020000Z-h1.pgdump",
    ],
)
def test_a_backup_is_found_by_key_name_url_or_latest(bucket: Any, wanted: str) -> None:
    found = backup.resolve_backup(bucket, backup.S3Location("bkt", "backups"), wanted)
    assert found["key"] == "backups/20261202T020000Z-h1.pgdump"


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ("backups/nope.pgdump", r"backup 'backups/nope.pgdump' not found in s3://bkt/backups/ "
                                r"\(3 backups there\): `make backups` lists them"),
        ("mlflow-artifacts/1/r/artifacts/x.pgdump", "not found"),  # only dumps under backups/
        ("s3://other/backups/x.pgdump", "is not in this stack's bucket s3://bkt"),
    ],
)  # fmt: skip
def test_an_unknown_backup_is_refused_with_how_to_list_them(
    bucket: Any, wanted: str, message: str
) -> None:
    with pytest.raises(backup.BackupError, match=message):
        backup.resolve_backup(bucket, backup.S3Location("bkt", "backups"), wanted)


def test_latest_of_no_backup_says_how_to_take_one(bucket: Any) -> None:
    with pytest.raises(
        backup.BackupError, match=r"no backup in s3://bkt/empty/ yet: .*make backup"
    ):
        backup.resolve_backup(bucket, backup.S3Location("bkt", "empty"), "latest")


def test_resolve_signs_a_download_url(bucket: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backups", "--destination", "s3://bkt/backups", "--resolve", "latest", "--presign"]
    assert backup.main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["key"] == "backups/20261202T020000Z-h1.pgdump"
    assert "20261202T020000Z-h1.pgdump" in found["download_url"]
    assert "Signature" in found["download_url"] or "X-Amz-Signature" in found["download_url"]


def test_fetch_refuses_anything_but_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError, match="signed backup URL on stdin"):
        backup.fetch("file:///etc/shadow", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_fetch_writes_a_private_file(tmp_path: Path) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"PGDMP" * 1000)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    target = tmp_path / "restore.pgdump"
    size = backup.fetch(f"http://127.0.0.1:{server.server_port}/x?X-Amz-Signature=s", str(target))
    server.server_close()
    assert size == 5000
    assert target.read_bytes().startswith(b"PGDMP")
    assert target.stat().st_mode & 0o777 == 0o600


# ----- what a dump holds --------------------------------------------------------------------


def fake_pg_restore(tmp_path: Path, data_script: str) -> str:
    """A pg_restore that lists fine and prints `data_script`'s output for --data-only."""
    path = tmp_path / "17" / "bin" / "pg_restore"
    path.parent.mkdir(parents=True)
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in --list) echo "; Archive created"; exit 0;; esac\n' + data_script + "\n"
    )
    path.chmod(0o755)
    return str(path)


def test_dump_revision_reads_the_alembic_row(tmp_path: Path) -> None:
    pg_restore = fake_pg_restore(
        tmp_path,
        "printf 'SET x = 0;\\nCOPY public.alembic_version (version_num) FROM stdin;\\n"
        "1b5f0d9ad7c1\\n\\\\.\\n'",
    )
    assert backup.dump_revision(pg_restore, "dump") == "1b5f0d9ad7c1"


def test_dump_revision_of_a_dump_without_mlflow_schema(tmp_path: Path) -> None:
    assert backup.dump_revision(fake_pg_restore(tmp_path, "true"), "dump") is None


def test_dump_revision_refuses_what_is_not_a_dump(tmp_path: Path) -> None:
    path = tmp_path / "pg_restore"
    path.write_text(
        "#!/bin/sh\necho 'pg_restore: error: input file is not a valid archive' >&2\nexit 1\n"
    )
    path.chmod(0o755)
    with pytest.raises(backup.BackupError, match=r"not a pg_dump archive .*valid archive"):
        backup.dump_revision(str(path), "dump")


class FakeConnection:
    """A psycopg2 connection whose REASSIGN fails with the given errors first."""

    def __init__(self, owned: int, failures: list[Exception]) -> None:
        self.owned, self.failures, self.statements = owned, failures, []

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cursor(self) -> FakeConnection:
        return self

    def execute(self, statement: Any, params: Any = None) -> None:
        text = statement if isinstance(statement, str) else repr(statement)
        self.statements.append(text)
        if "REASSIGN" in text and self.failures:
            raise self.failures.pop(0)

    def fetchone(self) -> tuple[int]:
        return (self.owned,)


def test_tables_handed_over_already_take_no_lock() -> None:
    connection = FakeConnection(owned=0, failures=[])
    backup.hand_over_tables(connection, "master")
    assert not any("REASSIGN" in s or "lock_timeout" in s for s in connection.statements)


def test_handover_waits_briefly_for_each_lock_and_starts_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from psycopg2 import errors

    monkeypatch.setattr(backup.time, "sleep", lambda _s: None)
    connection = FakeConnection(
        owned=3, failures=[errors.LockNotAvailable(), errors.DeadlockDetected()]
    )
    backup.hand_over_tables(connection, "master")
    assert sum("REASSIGN" in s for s in connection.statements) == 3
    assert sum("lock_timeout" in s for s in connection.statements) == 3


def test_handover_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from psycopg2 import errors

    monkeypatch.setattr(backup.time, "sleep", lambda _s: None)
    failures = [errors.LockNotAvailable() for _ in range(backup.HANDOVER_ATTEMPTS)]
    with pytest.raises(backup.BackupError, match=r"stayed busy.*nothing was changed"):
        backup.hand_over_tables(FakeConnection(owned=3, failures=failures), "master")
