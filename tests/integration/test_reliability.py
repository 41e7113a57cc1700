"""Reliability: load, faults and the guarded upgrade, through the public HTTPS endpoint.

Clients are the real MLflow client (one MlflowClient per thread, each logging to its own run)
with retries off, so every failed request is seen and timed. A value or artifact counts as
acknowledged when its request returned; afterwards every acknowledged one must be read back.
Faults are injected at fixed offsets while the clients run; failures may only fall inside the
fault's window. Each test restores what it broke; the numbers are printed (pytest -s).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

from standin import Host
from standin.playbook import PlaybookRun, run_playbook
from tests.integration.figures import figure
from tests.integration.stack import PINNED_VERSION, STACK, Stack, wait_serving, without_readers

pytestmark = pytest.mark.integration

METRIC = "loss"
ARTIFACT_DIR = "files"
OLD_VERSION = "3.16.1"  # its migration to the pinned release alters existing tables


def metric_value(client: int, step: int) -> float:
    return client * 1_000_000 + step + 0.5


@dataclass
class Client:
    """One training job: batches of metric values, an artifact now and then, a read."""

    number: int
    run_id: str
    work: Path
    batch: int
    artifact_every: int
    acked_steps: list[int] = field(default_factory=list)
    acked_artifacts: dict[str, str] = field(default_factory=dict)
    successes: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def call(self, action: Callable[[], object]) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            action()
        except (MlflowException, OSError) as error:  # requests' errors are OSErrors
            self.failures.append((time.monotonic(), str(error).splitlines()[0][:200]))
            return False
        self.successes.append(time.monotonic())
        return True

    def round(self, mlflow: object, index: int) -> None:
        from mlflow.entities import Metric

        steps = range(index * self.batch, (index + 1) * self.batch)
        now = int(time.time() * 1000)
        metrics = [Metric(METRIC, metric_value(self.number, s), now, s) for s in steps]
        if self.call(lambda: mlflow.log_batch(self.run_id, metrics=metrics)):
            self.acked_steps.extend(steps)
        if index % self.artifact_every == 0:
            path = self.work / f"c{self.number}-r{index}.bin"
            path.write_bytes(os.urandom(4096 + 997 * index))
            if self.call(lambda: mlflow.log_artifact(self.run_id, str(path), ARTIFACT_DIR)):
                self.acked_artifacts[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            self.call(lambda: mlflow.get_run(self.run_id))


@dataclass
class LoadResult:
    clients: list[Client]
    started: float
    seconds: float
    fault_times: dict[str, float]

    @property
    def values(self) -> int:
        return sum(len(c.acked_steps) for c in self.clients)

    @property
    def artifacts(self) -> int:
        return sum(len(c.acked_artifacts) for c in self.clients)

    @property
    def failures(self) -> list[tuple[float, str]]:
        return sorted(f for c in self.clients for f in c.failures)

    @property
    def requests(self) -> int:
        return sum(len(c.successes) + len(c.failures) for c in self.clients)

    def first_success_after(self, moment: float) -> float | None:
        return min((t for c in self.clients for t in c.successes if t > moment), default=None)

    def recovery_seconds(self, fault: str) -> float | None:
        """Seconds from `fault` to the first success after the last failure; None: never."""
        fault_time = self.fault_times[fault]
        last_failure = max((t for t, _ in self.failures), default=fault_time)
        recovered = self.first_success_after(max(last_failure, fault_time))
        return None if recovered is None else recovered - fault_time

    def summary(self) -> str:
        return (
            f"{len(self.clients)} clients, {self.seconds:.0f} s: {self.values} values "
            f"({self.values / self.seconds:.0f}/s), {self.artifacts} artifacts, "
            f"{self.requests} requests ({self.requests / self.seconds:.0f}/s), "
            f"{len(self.failures)} failed"
        )


class Load:
    """`clients` MLflow clients on one host, `rounds` rounds each, one round every `interval`."""

    def __init__(
        self,
        stack: Stack,
        host: Host,
        work: Path,
        *,
        clients: int = 8,
        rounds: int = 40,
        interval: float = 1.0,
        batch: int = 100,
        artifact_every: int = 5,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.url = stack.url(host).rstrip("/")
        self.rounds, self.interval = rounds, interval
        self.client = MlflowClient(self.url)
        experiment = self.client.create_experiment(f"load-{time.time_ns()}")
        self.clients = []
        for number in range(clients):
            run_id = self.client.create_run(experiment).info.run_id
            folder = work / f"client-{number}"
            folder.mkdir()
            self.clients.append(Client(number, run_id, folder, batch, artifact_every))

    def _drive(self, client: Client, start: float, settled: Callable[[], bool]) -> None:
        from mlflow.tracking import MlflowClient

        mlflow = MlflowClient(self.url)
        index = 0
        while index < self.rounds or not settled():
            time.sleep(max(0.0, start + index * self.interval - time.monotonic()))
            client.round(mlflow, index)
            index += 1

    def run(
        self,
        faults: list[tuple[float, str, Callable[[], object]]] = (),
        recover: tuple[str, float] | None = None,
    ) -> LoadResult:
        """Run every client; call each fault's action at its offset (seconds) from the start.

        recover=(fault, bound): past the rounds, the load goes on until the server serves again
        after that fault, or `bound` seconds after it, so the recovery time is always measured.
        """
        times: dict[str, float] = {}
        start = time.monotonic() + 0.5

        def settled() -> bool:
            if recover is None:
                return True
            fault, bound = recover
            if fault not in times:
                return False
            if time.monotonic() > times[fault] + bound:
                return True
            result = LoadResult(self.clients, start, 0.0, times)
            return result.recovery_seconds(fault) is not None

        def inject() -> None:
            for offset, name, action in faults:
                time.sleep(max(0.0, start + offset - time.monotonic()))
                times[name] = time.monotonic()
                action()
                times[f"{name} done"] = time.monotonic()

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        with ThreadPoolExecutor(len(self.clients)) as pool:
            list(pool.map(lambda c: self._drive(c, start, settled), self.clients))
        injector.join(timeout=300)
        return LoadResult(self.clients, start, time.monotonic() - start, times)

    def read_back(self, tmp_path: Path) -> tuple[int, int]:
        """Every acknowledged value and artifact, read back through the public endpoint."""
        values = artifacts = 0
        for client in self.clients:
            history = self.client.get_metric_history(client.run_id, METRIC)
            stored = {m.step: m.value for m in history}
            missing = [s for s in client.acked_steps if s not in stored]
            assert missing == [], f"client {client.number}: {len(missing)} values lost"
            assert all(stored[s] == metric_value(client.number, s) for s in client.acked_steps)
            values += len(client.acked_steps)
            if client.acked_artifacts:
                folder = self.client.download_artifacts(
                    client.run_id, ARTIFACT_DIR, str(tmp_path / f"dl-{client.number}")
                )
                for name, digest in client.acked_artifacts.items():
                    data = (Path(folder) / name).read_bytes()
                    assert hashlib.sha256(data).hexdigest() == digest, name
                    artifacts += 1
        return values, artifacts


@pytest.fixture
def client_env(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard client settings for user team, without retries (every failure counts)."""
    bundle = tmp_path / "servers.pem"  # every host's self-signed certificate
    bundle.write_text("".join(stack.cert(host).read_text() for host in stack.bed.hosts))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password("team"))
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(bundle))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def serving_after(stack: Stack) -> Iterator[None]:
    """Whatever a test broke: the database runs and both hosts serve again afterwards."""
    yield
    stack.bed.postgres.start()
    for host in stack.bed.hosts:
        if host.systemctl("is-active", "mlflow", check=False).stdout.strip() != "active":
            host.systemctl("start", "mlflow", check=False)
        wait_serving(stack, host, 180)


def took(value: float | None) -> str:
    return "never (bound passed)" if value is None else f"{value:.1f} s"


def assert_failures_within(result: LoadResult, start: float, end: float) -> None:
    outside = [(t - result.started, why) for t, why in result.failures if not start <= t <= end]
    assert outside == [], f"failures outside the fault window: {outside[:5]}"


# ----- load ----------------------------------------------------------------------------------


def test_nothing_lost_under_load(stack: Stack, client_env: None, tmp_path: Path) -> None:
    load = Load(stack, stack.bed.hosts[0], tmp_path, rounds=62, interval=1.0, batch=50)
    result = load.run()
    figure(f"load: {result.summary()}")
    assert result.failures == []  # no 5xx, nor anything else
    assert result.seconds >= 60
    values, artifacts = load.read_back(tmp_path)
    figure(f"load: read back {values} values and {artifacts} artifacts")
    assert values >= 20_000
    assert artifacts >= 50
    assert values == 8 * 62 * 50


# ----- faults --------------------------------------------------------------------------------


def test_database_unreachable_when_mlflow_starts(stack: Stack, serving_after: None) -> None:
    host = stack.bed.hosts[1]
    stack.bed.postgres.stop()
    # --no-block: the start now waits for the database (ExecStartPre), up to 80 s.
    host.systemctl("restart", "--no-block", "mlflow")
    time.sleep(12)
    down = stack.get(host, "/api/2.0/mlflow/experiments/search?max_results=1")
    state = host.systemctl("show", "-p", "SubState", "--value", "mlflow").stdout.strip()
    stack.bed.postgres.start()
    seconds = wait_serving(stack, host, 120)
    figure(
        f"database down at start: HTTP {down.status_code} while down (unit {state}); "
        f"serving {seconds:.1f} s after the database came back"
    )
    assert down.status_code >= 500
    assert state == "start-pre"  # waiting for the database, not crash-looping
    assert seconds < 30


def test_database_restart_mid_load(
    stack: Stack, client_env: None, tmp_path: Path, serving_after: None
) -> None:
    bed = stack.bed
    load = Load(stack, bed.hosts[0], tmp_path, rounds=25, interval=1.0, batch=50)
    faults = [(8, "db stop", bed.postgres.stop), (14, "db start", bed.postgres.start)]
    result = load.run(faults, recover=("db start done", 10))
    times = result.fault_times
    recovered = result.first_success_after(times["db start done"])
    last_failure = max((t for t, _ in result.failures), default=times["db stop"])
    figure(
        f"database restart under load: {result.summary()}; outage "
        f"{times['db start done'] - times['db stop']:.1f} s, first success "
        f"{took(None if recovered is None else recovered - times['db start done'])} and last "
        f"failure {last_failure - times['db start done']:.1f} s after the database was back"
    )
    assert recovered is not None, "nothing succeeded within 10 s of the database's return"
    assert result.failures, "the outage should have been seen"
    assert_failures_within(result, times["db stop"], times["db start done"] + 10)
    values, artifacts = load.read_back(tmp_path)
    assert values == result.values
    assert artifacts == result.artifacts


def test_mlflow_killed_under_load(
    stack: Stack, client_env: None, tmp_path: Path, serving_after: None
) -> None:
    host = stack.bed.hosts[0]

    def kill() -> None:
        pid = host.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout.strip()
        # Never `kill -9 0`: that would be this test's own process group.
        if not pid.isdigit() or int(pid) <= 1:
            raise AssertionError(f"mlflow has no main process ({pid!r})")
        host.run(["kill", "-9", "--", pid])

    load = Load(stack, host, tmp_path, rounds=25, interval=1.0, batch=50)
    result = load.run([(8, "kill", kill)], recover=("kill", 30))
    killed = result.fault_times["kill"]
    recovered = result.recovery_seconds("kill")
    figure(f"kill -9 under load: {result.summary()}; serving again {took(recovered)} after it")
    assert recovered is not None, "MLflow did not serve again within 30 s of kill -9"
    assert_failures_within(result, killed, killed + 30)
    values, artifacts = load.read_back(tmp_path)
    assert (values, artifacts) == (result.values, result.artifacts)


def test_host_reboot_under_load(
    stack: Stack, client_env: None, tmp_path: Path, serving_after: None
) -> None:
    host = stack.bed.hosts[1]
    load = Load(stack, host, tmp_path, rounds=30, interval=1.0, batch=50)
    result = load.run([(5, "reboot", host.reboot)], recover=("reboot", 45))
    rebooted, ssh_back = result.fault_times["reboot"], result.fault_times["reboot done"]
    recovered = result.recovery_seconds("reboot")
    figure(
        f"reboot under load: {result.summary()}; SSH back after {ssh_back - rebooted:.1f} s, "
        f"serving again {took(recovered)} after the reboot began"
    )
    assert recovered is not None, "MLflow did not serve again within 45 s of the reboot"
    assert_failures_within(result, rebooted, rebooted + 45)
    values, artifacts = load.read_back(tmp_path)
    assert (values, artifacts) == (result.values, result.artifacts)
    assert host.systemctl("is-enabled", "mlflow").stdout.strip() == "enabled"


def test_nginx_reload_under_load_fails_no_request(
    stack: Stack, client_env: None, tmp_path: Path
) -> None:
    host = stack.bed.hosts[0]
    master = host.run(["cat", "/run/nginx.pid"]).stdout.strip()
    reloads = [(3.0 + 3 * i, f"reload {i}", lambda: host.systemctl("reload", "nginx"))
               for i in range(5)]  # fmt: skip
    load = Load(stack, host, tmp_path, rounds=20, interval=1.0, batch=50)
    result = load.run(reloads)
    figure(f"nginx reloaded 5 times under load: {result.summary()}")
    assert result.failures == []
    assert host.run(["cat", "/run/nginx.pid"]).stdout.strip() == master
    values, artifacts = load.read_back(tmp_path)
    assert (values, artifacts) == (result.values, result.artifacts)


# ----- guarded upgrade -----------------------------------------------------------------------


def configure(stack: Stack, *extra: str) -> PlaybookRun:
    return run_playbook(
        stack.bed.outputs_file,
        stack.credentials_dir,
        STACK,
        ["-e", f"@{stack.users_file}", *extra],
        echo=False,
    )


def served_version(stack: Stack, host: Host) -> str:
    response = stack.get(host, "/version")
    assert response.ok, response.status_code
    return response.text.strip()


def serving_venv(host: Host) -> str:
    return host.run(["readlink", "/opt/mlflow/venv"]).stdout.strip()


def alembic_revision(stack: Stack) -> str:
    return stack.bed.query("SELECT version_num FROM alembic_version")[0][0]


def backups(stack: Stack) -> list[str]:
    return sorted(stack.bed.list_objects("backups/"))


@contextmanager
def long_read_transaction(stack: Stack) -> Iterator[None]:
    """A read transaction over every table, as a slow report holds one: pg_dump passes (it
    takes the same shared locks), an ALTER TABLE has to wait for it."""
    with closing(psycopg2.connect(stack.bed.postgres.dsn("127.0.0.1"), connect_timeout=5)) as db:
        with db.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for (table,) in cursor.fetchall():
                cursor.execute(f'LOCK TABLE "{table}" IN ACCESS SHARE MODE')
        yield
        db.rollback()


def steps_in_order(output: str, *needles: str) -> bool:
    positions = [output.find(needle) for needle in needles]
    return -1 not in positions and positions == sorted(positions)


def test_guarded_upgrade(stack: Stack, client_env: None, tmp_path: Path) -> None:
    first, second = stack.bed.hosts
    limit = ("--limit", second.name)
    try:
        # The second host serves the older release on a database migrated by it; the first host
        # is stopped meanwhile (its release would refuse the older schema).
        first.systemctl("stop", "mlflow")
        second.systemctl("stop", "mlflow")
        stack.bed.query("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        writers = without_readers(tmp_path)  # the reader's route map is the pinned release's
        old = configure(stack, "-e", f"@{writers}", "-e", f"mlflow_version={OLD_VERSION}", *limit)
        old.check()
        assert served_version(stack, second) == OLD_VERSION
        old_revision = alembic_revision(stack)
        run_id = log_a_run(stack, second, tmp_path)
        before = backups(stack)

        # A migration blocked by a long transaction: lock timeout, the old release serves on.
        pid = second.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout
        with long_read_transaction(stack):
            failed = configure(stack, "-e", "mlflow_db_upgrade_lock_timeout=3s", *limit)
        output = " ".join(failed.output.split())
        figure(f"failed upgrade: {failed_message(output)}")
        assert failed.returncode != 0
        assert f"The database was not upgraded to MLflow {PINNED_VERSION}" in output
        assert "lock timeout" in output
        assert f"MLflow {OLD_VERSION} keeps serving" in output
        assert served_version(stack, second) == OLD_VERSION
        assert second.systemctl("show", "-p", "MainPID", "--value", "mlflow").stdout == pid
        assert serving_venv(second) == f"/opt/mlflow/venv-{OLD_VERSION}"
        assert alembic_revision(stack) == old_revision
        after_failure = backups(stack)
        assert len(after_failure) == len(before) + 1  # the dump came before the attempt

        # The same upgrade without the lock: dump, migrate, switch, restart.
        upgrade = configure(stack).check()
        assert steps_in_order(
            upgrade.output,
            "TASK [mlflow : Dump the database",
            "TASK [mlflow : Upgrade the database schema",
            "TASK [mlflow : Switch the serving release",
            "TASK [systemd : Restart MLflow]",
        ), upgrade.output[-4000:]
        assert served_version(stack, second) == PINNED_VERSION
        assert serving_venv(second) == f"/opt/mlflow/venv-{PINNED_VERSION}"
        assert alembic_revision(stack) != old_revision
        new_backups = [key for key in backups(stack) if key not in after_failure]
        assert len(new_backups) == 1
        assert f"-schema-{old_revision}-to-mlflow-{PINNED_VERSION}" in new_backups[0]
        assert_restorable_dump(stack, new_backups[0], tmp_path, run_id)
        check_run_survived(stack, second, run_id)
        figure(
            f"guarded upgrade {OLD_VERSION} -> {PINNED_VERSION}: install of {OLD_VERSION} "
            f"{old.seconds:.0f} s, failed attempt {failed.seconds:.0f} s, upgrade "
            f"{upgrade.seconds:.0f} s; backup {new_backups[0]}"
        )
    finally:
        configure(stack).check()  # both hosts on the pinned release, the first one started
        for host in stack.bed.hosts:
            wait_serving(stack, host, 180)
    assert configure(stack).changed() == {h.name: 0 for h in stack.bed.hosts}
    assert served_version(stack, first) == PINNED_VERSION


def log_a_run(stack: Stack, host: Host, tmp_path: Path) -> str:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.url(host).rstrip("/"))
    run_id = client.create_run(client.create_experiment(f"upgrade-{time.time_ns()}")).info.run_id
    client.log_batch(run_id, metrics=[Metric(METRIC, float(s), 0, s) for s in range(500)])
    client.log_param(run_id, "logged_by", OLD_VERSION)
    return run_id


def check_run_survived(stack: Stack, host: Host, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.url(host).rstrip("/"))
    assert client.get_run(run_id).data.params == {"logged_by": OLD_VERSION}
    assert len(client.get_metric_history(run_id, METRIC)) == 500


def failed_message(output: str) -> str:
    start = output.rfind("The database was not upgraded")
    return output[start : start + 600] if start >= 0 else output[-3000:]


def assert_restorable_dump(stack: Stack, key: str, tmp_path: Path, run_id: str) -> None:
    """The backup is a pg_dump archive pg_restore reads, holding the run logged before."""
    dump = tmp_path / "backup.pgdump"
    body = stack.bed.s3.client().get_object(Bucket=stack.bed.s3.bucket, Key=key)["Body"].read()
    dump.write_bytes(body)
    assert body.startswith(b"PGDMP")
    # PostgreSQL 17's own pg_restore (the database's major), reading the archive from stdin.
    pg_restore = stack.bed.postgres.tool("pg_restore")
    listing = subprocess.run(
        [*pg_restore, "--list"], input=body, capture_output=True, check=True
    ).stdout.decode()
    assert "TABLE DATA public metrics" in listing
    sql = subprocess.run(
        [*pg_restore, "--data-only", "--table=runs", "-f", "-"],
        input=body, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert run_id in sql
