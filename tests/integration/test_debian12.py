"""Debian 12 (bookworm) stays supported: a smaller run on one real Debian 12 host.

The rest of the suite runs on Debian 13, the default `os`. Here: a cold converge, a run with
the MLflow client, a rerun that changes nothing, and what happens when the database
(PostgreSQL 17, RDS's default) is newer than Debian 12's own pg_dump (15): a backup the run
needs stops it before the database or the serving release change, saying what to do.

One host in a bed of its own in the next slot (the scale session's, which runs later in a
session of its own), up for this module only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin import HarnessError, Slot, Testbed
from standin.deps import missing_prerequisites
from standin.slot import from_env
from standin.util import REPO_ROOT
from tests.integration.figures import figure
from tests.integration.stack import Stack, configure_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bed12() -> Iterator[Testbed]:
    problems = missing_prerequisites()
    if problems:
        pytest.fail("Debian 12 tests need: " + "; ".join(problems), pytrace=False)
    slot = Slot((from_env().number + 1) % 10)
    testbed = Testbed(REPO_ROOT / ".cache" / f"testhosts-debian12{slot.suffix}", slot, debian=12)
    started = time.monotonic()
    try:
        testbed.up(1, replace=True)
    except HarnessError as error:
        pytest.fail(f"Debian 12 test bed did not come up: {error}", pytrace=False)
    figure(f"Debian 12 bed up in {time.monotonic() - started:.0f} s")
    yield testbed
    if os.environ.get("MLFLOW_AWS_TESTBED_KEEP") != "1":
        testbed.down()


@pytest.fixture(scope="module")
def stack12(bed12: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return configure_stack(bed12, tmp_path_factory.mktemp("debian12"))


def test_host_is_debian_12(bed12: Testbed) -> None:
    release = bed12.hosts[0].run(["cat", "/etc/os-release"]).stdout
    assert 'VERSION_ID="12"' in release
    assert "bookworm" in release


def test_cold_converge_then_rerun_changes_nothing(stack12: Stack) -> None:
    host = stack12.bed.hosts[0]
    assert stack12.cold.recap[host.name]["failed"] == 0
    assert stack12.rerun.changed() == {host.name: 0}
    cold, rerun = stack12.cold.seconds, stack12.rerun.seconds
    figure(f"Debian 12: cold converge {cold:.0f} s, rerun {rerun:.0f} s")


def test_mlflow_client_workflow(
    stack12: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    host = stack12.bed.hosts[0]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack12.password("team"))
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(stack12.cert(host)))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(stack12.url(host).rstrip("/"))
    run_id = client.create_run(client.create_experiment(f"debian12-{time.time_ns()}")).info.run_id
    client.log_param(run_id, "os", "debian-12")
    for step in range(10):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    artifact = tmp_path / "notes.txt"
    artifact.write_text("trained on bookworm\n")
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)

    assert client.get_run(run_id).data.params == {"os": "debian-12"}
    assert len(client.get_metric_history(run_id, "loss")) == 10
    fetched = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "dl"))
    assert Path(fetched).read_text() == "trained on bookworm\n"
    assert any(k.endswith(f"{run_id}/artifacts/notes.txt") for k in stack12.bed.list_objects())
    assert stack12.bed.query("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == [
        ("FINISHED",)
    ]


def test_backup_with_older_os_pg_dump_stops_before_any_change(stack12: Stack) -> None:
    """Debian 12's pg_dump is 15, the database 17: a run that must back up stops, says why."""
    host = stack12.bed.hosts[0]
    assert stack12.bed.postgres.server_version().startswith("17.")
    revision = stack12.bed.query("SELECT version_num FROM alembic_version")
    serving = host.run(["readlink", "/opt/mlflow/venv"]).stdout.strip()
    pid = host.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout.strip()

    run = stack12.run_playbook("-e", "mlflow_db_migrate=always", echo=False)
    assert run.returncode != 0
    assert "pg_dump 15 from Debian 12's packages cannot back up this PostgreSQL 17" in run.output
    assert "mlflow_postgresql_apt_distributions" in run.output
    assert "os: debian-13" in run.output
    # Nothing changed: no third-party repository, same schema, same release, same process.
    assert host.run(["test", "-e", "/etc/apt/sources.list.d/pgdg.sources"], check=False).returncode
    assert stack12.bed.query("SELECT version_num FROM alembic_version") == revision
    assert host.run(["readlink", "/opt/mlflow/venv"]).stdout.strip() == serving
    assert host.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout.strip() == pid
    assert stack12.get(host, "/health", user=None).ok
