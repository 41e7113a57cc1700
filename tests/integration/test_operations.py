"""Day-2 operations on the session's two configured hosts: scheduled backups, `make backup`,
`make restore` (a disaster drill and its refusals), garbage collection (`mlflow gc` timer).

Everything runs the way an operator does it: `make <target>` from the repository, through the
pulumi_stack inventory plugin, against the bed's saved stack outputs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from standin import Host
from standin.playbook import ANSIBLE_DIR, REPO, VENV_BIN, playbook_env
from standin.testbed import ARTIFACTS_PREFIX
from tests.integration.balancer import DRAIN_SECONDS, Balancer
from tests.integration.figures import figure
from tests.integration.hammer import Hammer
from tests.integration.stack import STACK, Stack, wait_serving

pytestmark = pytest.mark.integration

BACKUP_KEY = re.compile(r"backup: s3://[^/\s]+/(backups/\S+\.pgdump)")
DAY_MS = 24 * 3600 * 1000
RESTORE_FILE = "/var/lib/mlflow/restore.pgdump"


def make(stack: Stack, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`make <args>` as the operator runs it, against the test stack's outputs."""
    env = playbook_env(stack.bed.outputs_file, stack.credentials_dir, STACK)
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def flat(result: subprocess.CompletedProcess[str]) -> str:
    """The output on one line (Ansible wraps and escapes long messages)."""
    return " ".join((result.stdout + result.stderr).replace("\\n", " ").split())


def take_backup(stack: Stack) -> str:
    result = make(stack, "backup")
    assert result.returncode == 0, flat(result)[-3000:]
    keys = BACKUP_KEY.findall(result.stdout)
    assert len(keys) == 1, result.stdout[-3000:]  # one host runs the job, one dump
    return keys[0]


def server_pids(stack: Stack) -> dict[str, str]:
    """MainPID of mlflow.service per host ('0' when it is not running)."""
    return {
        host.name: host.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout.strip()
        for host in stack.bed.hosts
    }


@pytest.fixture
def client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MlflowClient of user team on the first host."""
    from mlflow.tracking import MlflowClient

    host = stack.bed.hosts[0]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password("team"))
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(stack.cert(host)))
    return MlflowClient(stack.url(host).rstrip("/"))


@pytest.fixture
def all_serving(stack: Stack) -> Iterator[None]:
    """After the test: every host serves (a failed test must not leave the bed broken)."""
    yield
    if not stack.bed.postgres.is_running():
        stack.bed.postgres.start()
    for host in stack.bed.hosts:
        host.systemctl("start", "mlflow", check=False)
        wait_serving(stack, host, 180)


# ----- the disaster drill ------------------------------------------------------------------


def fill(client: Any, tmp_path: Path) -> list[str]:
    """Experiments, runs with params, tags, 1000-step metrics and artifacts."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = time.time_ns()
    experiments = []
    for e in range(2):
        experiment = client.create_experiment(f"drill-{stamp}-{e}", tags={"team": f"t{e}"})
        experiments.append(experiment)
        for r in range(2):
            run_id = client.create_run(experiment, run_name=f"run-{e}-{r}").info.run_id
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric("loss", 1.0 / (s + 1) + r, now + s, s) for s in range(1000)],
                params=[Param(f"p{i}", f"{e}-{r}-{i}") for i in range(5)],
                tags=[RunTag("stage", f"s{r}"), RunTag("owner", "drill")],
            )
            client.log_batch(
                run_id, metrics=[Metric("acc", s / 1000, now + s, s) for s in range(1000)]
            )
            artifact = tmp_path / f"model-{e}-{r}.txt"
            artifact.write_text(f"weights of run {e}-{r} " * 200)
            client.log_artifact(run_id, str(artifact), artifact_path="model")
            client.set_terminated(run_id)
    return experiments


def row_counts(stack: Stack) -> dict[str, int]:
    """Rows of every MLflow table: the whole database, beyond the drill's own runs."""
    tables = stack.bed.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {t: stack.bed.query(f'SELECT count(*) FROM "{t}"')[0][0] for (t,) in tables}  # noqa: S608


def snapshot(client: Any, experiment_ids: list[str], tmp_path: Path) -> dict[str, Any]:
    """Everything a user sees of the experiments and their runs, artifacts' contents included."""
    seen: dict[str, Any] = {}
    for experiment in map(client.get_experiment, experiment_ids):
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        seen[f"experiment {experiment.name}"] = (experiment.experiment_id, experiment.tags)
        for run in runs:
            run_id = run.info.run_id
            history = {
                key: [
                    (m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)
                ]
                for key in run.data.metrics
            }
            artifacts = {}
            for listed in client.list_artifacts(run_id, "model"):
                local = client.download_artifacts(run_id, listed.path, str(tmp_path / run_id))
                artifacts[listed.path] = Path(local).read_text()
            seen[run_id] = (
                run.info.run_name,
                run.info.status,
                run.data.params,
                run.data.tags,
                history,
                artifacts,
            )
    return seen


def test_disaster_drill(stack: Stack, client: Any, tmp_path: Path, all_serving: None) -> None:
    experiments = fill(client, tmp_path)
    before = snapshot(client, experiments, tmp_path / "before")
    drill_runs = [value for value in before.values() if len(value) == 6]
    metric_values = sum(len(h) for run in drill_runs for h in run[4].values())
    assert len(drill_runs) >= 4
    assert metric_values >= 8000

    key = take_backup(stack)
    assert key in stack.bed.list_objects("backups/")
    rows = row_counts(stack)

    # The disaster: the database is gone, and an empty one is put in its place.
    stack.bed.postgres.admin_sql(
        "DROP DATABASE mlflow WITH (FORCE);\nCREATE DATABASE mlflow OWNER mlflow;\n"
    )
    assert stack.bed.query("SELECT to_regclass('runs') IS NULL") == [(True,)]

    started = time.monotonic()
    restored = make(stack, "restore", "BACKUP=latest", "CONFIRM=yes")
    seconds = time.monotonic() - started
    assert restored.returncode == 0, flat(restored)[-3000:]
    assert f"restored s3://{stack.bed.s3.bucket}/{key}" in flat(restored)

    for host in stack.bed.hosts:
        wait_serving(stack, host, 60)
    after = snapshot(client, experiments, tmp_path / "after")
    assert after == before
    assert row_counts(stack) == rows
    pg_restore = re.search(r"in ([0-9.]+) s;", flat(restored))
    figure(
        f"disaster drill: {len(drill_runs)} runs, {metric_values} metric values, "
        f"{len(before) - len(drill_runs)} experiments ({sum(rows.values())} rows in all) restored "
        f"from {key}: make restore "
        f"{seconds:.0f} s (pg_restore {pg_restore.group(1) if pg_restore else '?'} s), "
        "every run, metric history, param, tag and artifact back"
    )


# ----- the timers --------------------------------------------------------------------------


def unit_file_exists(host: Host, unit: str) -> bool:
    return host.run(["test", "-e", f"/etc/systemd/system/{unit}"], check=False).returncode == 0


def test_timers_on_exactly_one_host(stack: Stack) -> None:
    first, second = stack.bed.hosts
    for timer in ("mlflow-backup.timer", "mlflow-gc.timer"):
        assert first.systemctl("is-enabled", timer).stdout.strip() == "enabled"
        assert first.systemctl("is-active", timer).stdout.strip() == "active"
        assert not unit_file_exists(second, timer)
    assert not unit_file_exists(second, "mlflow-backup.service")
    assert "mlflow" not in second.systemctl("list-timers", "--all").stdout


JOB_UNITS = ("mlflow-backup.service", "mlflow-backup.timer", "mlflow-gc.service", "mlflow-gc.timer")


def test_a_limited_run_leaves_the_jobs_on_the_first_host(stack: Stack) -> None:
    """`--limit <second host>` (a replaced instance, a guarded upgrade): the jobs stay on the
    inventory's first host, and the limited host loses a stale copy (as a run of a role that
    took the first host of the play left it)."""
    first, second = stack.bed.hosts
    for unit in JOB_UNITS:
        second.write_file(
            f"/etc/systemd/system/{unit}", first.read_file(f"/etc/systemd/system/{unit}")
        )
    second.systemctl("daemon-reload")
    second.systemctl("enable", "--now", "mlflow-backup.timer", "mlflow-gc.timer")
    assert "mlflow-backup.timer" in second.systemctl("list-timers", "--all").stdout

    started = time.monotonic()
    run = stack.run_playbook("--limit", second.name, echo=False).check()
    figure(
        f"converge --limit {second.name} (jobs removed there): {time.monotonic() - started:.0f} s"
    )

    assert set(run.recap) == {second.name}
    for unit in JOB_UNITS:
        assert not unit_file_exists(second, unit), unit
    assert not unit_file_exists(second, "timers.target.wants/mlflow-backup.timer")
    assert "mlflow" not in second.systemctl("list-timers", "--all").stdout
    for timer in ("mlflow-backup.timer", "mlflow-gc.timer"):
        assert first.systemctl("is-active", timer).stdout.strip() == "active"


def test_backup_timer_fires(stack: Stack) -> None:
    first = stack.bed.hosts[0]
    before = set(stack.bed.list_objects("backups/"))
    started = time.monotonic()
    # What the timer triggers, started as the timer does.
    first.systemctl("start", "mlflow-backup.service")
    seconds = time.monotonic() - started
    new = sorted(set(stack.bed.list_objects("backups/")) - before)
    assert len(new) == 1, new
    assert new[0].endswith(f"-{first.name}.pgdump"), new
    journal = first.run(["journalctl", "-u", "mlflow-backup.service", "-o", "cat"]).stdout
    assert new[0] in journal
    assert (
        first.systemctl("show", "-p", "Result", "--value", "mlflow-backup.service").stdout.strip()
        == "success"
    )
    figure(f"scheduled backup (mlflow-backup.service): {seconds:.1f} s, {new[0]}")


# ----- garbage collection ------------------------------------------------------------------


def artifact_keys(stack: Stack, experiment_id: str, run_id: str) -> list[str]:
    return stack.bed.list_objects(f"{ARTIFACTS_PREFIX}/{experiment_id}/{run_id}/")


def test_gc_purges_only_old_deletions(stack: Stack, client: Any, tmp_path: Path) -> None:
    stamp = time.time_ns()
    experiment = client.create_experiment(f"gc-{stamp}")
    doomed_experiment = client.create_experiment(f"gc-doomed-{stamp}")
    held_experiment = client.create_experiment(f"gc-held-{stamp}")
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("x" * 1000)
    runs = {}
    for name, exp in (("old", experiment), ("recent", experiment), ("live", experiment),
                      ("in_doomed", doomed_experiment), ("held_old", held_experiment),
                      ("held_recent", held_experiment)):  # fmt: skip
        run_id = client.create_run(exp, run_name=name).info.run_id
        client.log_param(run_id, "name", name)
        client.log_artifact(run_id, str(artifact))
        runs[name] = (exp, run_id)
        assert artifact_keys(stack, exp, run_id)
    client.delete_run(runs["old"][1])
    client.delete_run(runs["recent"][1])
    client.delete_experiment(doomed_experiment)  # its runs are deleted with it, at the same time
    client.delete_experiment(held_experiment)
    # Deleted 31 days ago, as far as the database knows: the runs, and the experiments with
    # their runs (MLflow stamps both when an experiment is deleted).
    long_ago = int(time.time() * 1000) - 31 * DAY_MS
    stack.bed.query(
        "UPDATE runs SET deleted_time = %s WHERE run_uuid = %s OR experiment_id IN (%s, %s)",
        (long_ago, runs["old"][1], int(doomed_experiment), int(held_experiment)),
    )
    stack.bed.query(
        "UPDATE experiments SET last_update_time = %s WHERE experiment_id IN (%s, %s)",
        (long_ago, int(doomed_experiment), int(held_experiment)),
    )
    # A run of the experiment deleted long ago, restored and deleted again just now: mlflow gc
    # alone would fail on it ("not older than the required age") at every tick for 30 days.
    client.restore_run(runs["held_recent"][1])
    client.delete_run(runs["held_recent"][1])

    first = stack.bed.hosts[0]
    started = time.monotonic()
    first.systemctl("start", "mlflow-gc.service")  # what the timer triggers
    seconds = time.monotonic() - started
    assert (
        first.systemctl("show", "-p", "Result", "--value", "mlflow-gc.service").stdout.strip()
        == "success"
    )

    def run_exists(name: str) -> bool:
        return bool(stack.bed.query("SELECT 1 FROM runs WHERE run_uuid = %s", (runs[name][1],)))

    assert not run_exists("old")
    assert not artifact_keys(stack, *runs["old"])
    assert not run_exists("in_doomed")
    assert not artifact_keys(stack, *runs["in_doomed"])
    assert not stack.bed.query(
        "SELECT 1 FROM experiments WHERE experiment_id = %s", (int(doomed_experiment),)
    )
    # The held experiment waits for its recently deleted run; its old run is purged as any.
    assert not run_exists("held_old")
    assert not artifact_keys(stack, *runs["held_old"])
    for name in ("recent", "live", "held_recent"):
        assert run_exists(name), name
        assert artifact_keys(stack, *runs[name]), name
    assert client.get_run(runs["live"][1]).data.params == {"name": "live"}
    assert client.get_run(runs["recent"][1]).info.lifecycle_stage == "deleted"
    assert client.get_run(runs["held_recent"][1]).info.lifecycle_stage == "deleted"
    assert client.get_experiment(held_experiment).lifecycle_stage == "deleted"
    journal = first.run(["journalctl", "-u", "mlflow-gc.service", "-o", "cat"]).stdout
    assert runs["old"][1] in journal
    assert f"deleted experiment {held_experiment} (gc-held-{stamp}" in journal
    figure(
        f"gc (mlflow-gc.service): {seconds:.1f} s, 2 old runs and 1 old experiment purged, "
        "1 experiment held for its younger run"
    )


def test_make_gc_runs_the_job(stack: Stack) -> None:
    result = make(stack, "gc")
    assert result.returncode == 0, flat(result)[-3000:]
    assert "mlflow-gc" in result.stdout


# ----- bad input: nothing changes ------------------------------------------------------------


@pytest.fixture(scope="module")
def latest_backup(stack: Stack) -> str:
    return take_backup(stack)


def test_make_backups_lists_them(stack: Stack, latest_backup: str) -> None:
    result = make(stack, "backups")
    assert result.returncode == 0, flat(result)[-3000:]
    assert latest_backup in result.stdout


def test_restore_without_confirmation(stack: Stack, latest_backup: str) -> None:
    pids = server_pids(stack)
    result = make(stack, "restore", "BACKUP=latest")
    output = flat(result)
    figure(f"make restore without CONFIRM: {output[output.find('make restore replaces') :][:400]}")
    assert result.returncode != 0
    assert "make restore replaces every MLflow table of the database mlflow" in output
    assert "of stack e2e" in output
    assert latest_backup in output
    assert "taken 20" in output
    assert f"make restore BACKUP={latest_backup} CONFIRM=yes" in output
    assert "Nothing was changed" in output
    assert server_pids(stack) == pids
    assert "0" not in pids.values()


def test_restore_unknown_backup(stack: Stack, latest_backup: str) -> None:
    pids = server_pids(stack)
    result = make(stack, "restore", "BACKUP=backups/19700101T000000Z-nope.pgdump", "CONFIRM=yes")
    output = flat(result)
    figure(f"make restore, unknown key: {output[output.find('backup ') :][:300]}")
    assert result.returncode != 0
    assert "backup 'backups/19700101T000000Z-nope.pgdump' not found in s3://" in output
    assert "make backups" in output
    assert "Nothing was changed" in output
    assert server_pids(stack) == pids


def test_restore_without_backup_named(stack: Stack) -> None:
    result = make(stack, "restore", "CONFIRM=yes")
    assert result.returncode != 0
    assert "BACKUP is missing" in flat(result)


def test_restore_database_unreachable(stack: Stack, latest_backup: str, all_serving: None) -> None:
    pids = server_pids(stack)
    stack.bed.postgres.stop()
    try:
        result = make(stack, "restore", "BACKUP=latest", "CONFIRM=yes")
        output = flat(result)
        figure(f"make restore, database down: {output[output.find('The database') :][:300]}")
        assert result.returncode != 0
        assert "does not answer" in output
        assert "Nothing was changed" in output
        assert server_pids(stack) == pids
        assert "0" not in pids.values()
        for host in stack.bed.hosts:
            assert (
                host.run(["test", "-e", "/var/lib/mlflow/restore.pgdump"], check=False).returncode
                != 0
            )
    finally:
        stack.bed.postgres.start()


# ----- database password rotation -------------------------------------------------------------

API = "/api/2.0/mlflow/experiments/search?max_results=1"  # answered from the database


def rotate_db(stack: Stack, outputs_file: Path) -> subprocess.CompletedProcess[str]:
    """`make rotate-db` with the test stack's users (its site.yml run keeps both users)."""
    env = playbook_env(outputs_file, stack.credentials_dir, STACK)
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "rotate_db.yml", "-e", f"@{stack.users_file}"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


class TimedFailures(list):
    """A Hammer's failure list that also notes when each failure happened."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: str) -> None:
        self.times.append(time.monotonic())
        super().append(item)


def timed(hammer: Hammer) -> Hammer:
    hammer.failures = TimedFailures()
    return hammer


def gap_seconds(hammer: Hammer) -> float:
    """From the first failed request to the last one."""
    times = getattr(hammer.failures, "times", [])
    return times[-1] - times[0] if times else 0.0


def host_logins(stack: Stack) -> set[str]:
    """Database users of the sessions the hosts hold now (each host asked once first, so that
    it holds one)."""
    for host in stack.bed.hosts:
        assert stack.get(host, "/api/2.0/mlflow/experiments/search?max_results=1").ok
    rows = stack.bed.query(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE client_addr <<= %s::inet",
        (stack.bed.slot.subnet,),
    )
    return {row[0] for row in rows}


def can_login(stack: Stack, role: str) -> bool:
    return stack.bed.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)) == [
        (True,)
    ]


def test_rotate_db_drops_no_request_behind_a_balancer(
    stack: Stack, tmp_path: Path, all_serving: None
) -> None:
    bed = stack.bed
    login_dir = stack.stack_dir / "db"
    balancer = Balancer(bed.hosts, bed.slot.gateway, tmp_path / "balancer").start()
    behind = {**bed.outputs(), "url": balancer.url, "drain_seconds": DRAIN_SECONDS}
    behind["ca_certificate"] = balancer.certificate.read_text()
    outputs_file = tmp_path / "outputs.json"
    outputs_file.touch(mode=0o600)
    outputs_file.write_text(json.dumps(behind))
    try:
        # The stack behind the balancer, configured as such a stack is (its outputs' url is the
        # balancer's): every host accepts the balancer's name as Host. Otherwise MLflow refuses
        # the requests (403, "Invalid Host header") until the rotation's own run renames them.
        replace(stack, outputs_file=outputs_file).configure(echo=False).check()
        # 1: from the master user to mlflow_a, every request through the balancer.
        started = time.monotonic()
        with Hammer(
            balancer.url + API, ("team", stack.password("team")), balancer.certificate
        ) as hammer:
            first = rotate_db(stack, outputs_file)
        seconds = time.monotonic() - started
        assert first.returncode == 0, flat(first)[-3000:]
        figure(
            f"make rotate-db (master user -> mlflow_a), 2 hosts behind the balancer: "
            f"{seconds:.0f} s, {hammer.ok} requests, {len(hammer.failures)} failed"
        )
        assert hammer.failures == []
        assert hammer.ok > 20
        assert (login_dir / "login").read_text().strip() == "mlflow_a"
        password = (login_dir / "mlflow_a.password").read_text().strip()
        assert len(password) == 40
        assert (login_dir / "mlflow_a.password").stat().st_mode & 0o777 == 0o600
        assert password not in first.stdout + first.stderr
        assert host_logins(stack) == {"mlflow_a"}
        for host in bed.hosts:
            assert "mlflow_a@" in host.read_file("/etc/mlflow/mlflow.env")

        # 2: mlflow_a -> mlflow_b without a balancer: each host's own gap, as a one-host stack
        # has it (drain_seconds 0), measured on the first host directly.
        first_host = bed.hosts[0]
        started = time.monotonic()
        with timed(
            Hammer(
                stack.url(first_host, API), ("team", stack.password("team")), stack.cert(first_host)
            )
        ) as direct:
            second = rotate_db(stack, bed.outputs_file)
        seconds = time.monotonic() - started
        assert second.returncode == 0, flat(second)[-3000:]
        gap = gap_seconds(direct)
        figure(
            f"make rotate-db (mlflow_a -> mlflow_b), one host seen directly (no balancer): "
            f"{seconds:.0f} s, {direct.ok} requests ok, {len(direct.failures)} failed "
            f"(during its restart, about {gap:.1f} s)"
        )
        assert host_logins(stack) == {"mlflow_b"}
        assert not can_login(stack, "mlflow_a")
        assert can_login(stack, "mlflow_b")
        assert not (login_dir / "mlflow_a.password").exists()
        assert (login_dir / "login").read_text().strip() == "mlflow_b"
        # The old password is refused by the database.
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(
                host="127.0.0.1", port=bed.postgres.port, user="mlflow_a", password=password,
                dbname="mlflow", connect_timeout=5,
            ).close()  # fmt: skip
        # MLflow's tables belong to the owner role; the logins own nothing.
        owners = bed.query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        assert owners == [("mlflow_owner",)]
    finally:
        balancer.stop()
        # Back on the master user and the bed's own outputs, as the other tests expect.
        for path in login_dir.glob("*"):
            path.unlink()
        stack.configure(echo=False).check()
