"""`make verify` against the configured test stack: it passes, removes its own experiment, and
fails naming the check when nginx or MLflow is down (both restored afterwards)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from standin import Host
from standin.util import REPO_ROOT
from tests.integration.figures import figure
from tests.integration.stack import STACK, USERS, Stack, wait_serving

pytestmark = pytest.mark.integration

CHECKS = [
    "tls",
    "tls-1.1-refused",
    "health",
    "401-without-credentials",
    "401-wrong-password",
    *[f"user-{user}" for user in USERS],
    "run-roundtrip",
    "cleanup",
]


def make_verify(stack: Stack) -> subprocess.CompletedProcess[str]:
    """`make verify` as the operator runs it, for the test stack's outputs and credentials."""
    env = {
        **os.environ,
        "STACK": STACK,
        "MLFLOW_AWS_OUTPUTS_FILE": str(stack.outputs_file or stack.bed.outputs_file),
        "MLFLOW_AWS_CREDENTIALS_DIR": str(stack.credentials_dir),
        "MLFLOW_AWS_USERS_FILE": str(stack.users_file),
    }
    return subprocess.run(
        ["make", "--no-print-directory", "verify"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def results(output: str) -> dict[str, str]:
    """check name -> ok/FAIL, from the one line per check."""
    return dict(
        (name, status) for status, name in re.findall(r"^(ok|FAIL) +([\w.-]+):", output, re.M)
    )


@pytest.fixture
def first_host(stack: Stack) -> Host:
    return stack.bed.hosts[0]  # the stack's url


def test_verify_passes_on_the_configured_stack(stack: Stack, first_host: Host) -> None:
    started = time.monotonic()
    run = make_verify(stack)
    seconds = time.monotonic() - started
    print(run.stdout, run.stderr)

    assert run.returncode == 0
    assert results(run.stdout) == dict.fromkeys(CHECKS, "ok")
    assert run.stdout.strip().splitlines()[-1] == f"make verify: all {len(CHECKS)} checks passed"
    figure(f"make verify on the test stack: {seconds:.1f} s")
    # Its experiment is deleted and holds no artifact any more.
    experiment = re.search(r"experiment (\d+) and its artifact deleted", run.stdout)
    assert experiment
    found = stack.get(
        first_host, f"/api/2.0/mlflow/experiments/get?experiment_id={experiment[1]}"
    ).json()["experiment"]
    assert found["lifecycle_stage"] == "deleted"
    assert found["name"].startswith("mlflow-aws-verify-")
    runs = stack.bed.query(
        "SELECT run_uuid FROM runs WHERE experiment_id = %s AND lifecycle_stage = 'active'",
        (int(experiment[1]),),
    )
    assert runs == []
    leftovers = [
        key
        for key in stack.bed.list_objects()
        if f"/{experiment[1]}/" in f"/{key}" and key.endswith("verify/payload.bin")
    ]
    assert leftovers == []


@pytest.fixture
def nginx_stopped(stack: Stack, first_host: Host) -> Iterator[None]:
    first_host.systemctl("stop", "nginx")
    try:
        yield
    finally:
        first_host.systemctl("start", "nginx")
        wait_serving(stack, first_host, 60)


@pytest.fixture
def mlflow_stopped(stack: Stack, first_host: Host) -> Iterator[None]:
    first_host.systemctl("stop", "mlflow")
    try:
        yield
    finally:
        first_host.systemctl("start", "mlflow")
        wait_serving(stack, first_host, 120)


@pytest.mark.usefixtures("nginx_stopped")
def test_verify_fails_naming_the_checks_with_nginx_stopped(stack: Stack) -> None:
    run = make_verify(stack)
    print(run.stdout, run.stderr)

    assert run.returncode != 0
    assert results(run.stdout)["tls"] == "FAIL"
    assert results(run.stdout)["health"] == "FAIL"
    assert [name for name, status in results(run.stdout).items() if status == "ok"] == ["cleanup"]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("make verify: FAILED tls, tls-1.1-refused, health,")


@pytest.mark.usefixtures("mlflow_stopped")
def test_verify_fails_naming_the_checks_with_mlflow_stopped(stack: Stack) -> None:
    run = make_verify(stack)
    print(run.stdout, run.stderr)

    assert run.returncode != 0
    found = results(run.stdout)
    # nginx still answers: TLS is fine and anonymous requests are still refused.
    assert {name: found[name] for name in ("tls", "401-without-credentials")} == {
        "tls": "ok",
        "401-without-credentials": "ok",
    }
    assert found["health"] == found["run-roundtrip"] == found["user-team"] == "FAIL"
    assert "FAIL  health: GET /health: HTTP 502, want 200" in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith("make verify: FAILED health, ")
