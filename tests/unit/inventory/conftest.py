"""Fixtures for the inventory plugin tests: stack outputs, plugin config files, a fake pulumi."""

from __future__ import annotations

import copy
import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ENV_VARS = ("STACK", "MLFLOW_AWS_OUTPUTS_FILE", "MLFLOW_AWS_CREDENTIALS_DIR", "ANSIBLE_CONFIG")

SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
DB_PASSWORD = "dbS3cretPassw0rd"

BASE_OUTPUTS: dict[str, Any] = {
    "hosts": [
        {
            "name": "mlflow-dev-1",
            "public_ip": "203.0.113.10",
            "private_ip": "10.0.1.10",
            "public_dns": "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
        }
    ],
    "ssh_user": "ubuntu",
    "ssh_private_key": SSH_KEY,
    "db_dsn": f"postgresql://mlflow:{DB_PASSWORD}@db.internal:5432/mlflow",
    "artifacts_destination": "s3://mlflow-dev-artifacts/mlflow-artifacts",
    "region": "eu-west-1",
    "url": "https://ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
}


@pytest.fixture
def expected_host_vars() -> Callable[[Path, Path], dict[str, Any]]:
    """The host variables of BASE_OUTPUTS' host, its credentials in stack_dir, key in key_file."""

    def expected(stack_dir: Path, key_file: Path) -> dict[str, Any]:
        return {
            "ansible_host": "203.0.113.10",
            "ansible_user": "ubuntu",
            "ansible_ssh_private_key_file": str(key_file),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={stack_dir}/known_hosts"
            " -o IdentitiesOnly=yes",
            "mlflow_stack": "dev",
            "mlflow_credentials_dir": str(stack_dir),
            "mlflow_db_dsn": BASE_OUTPUTS["db_dsn"],
            "mlflow_artifacts_destination": "s3://mlflow-dev-artifacts/mlflow-artifacts",
            "mlflow_public_dns": "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
            "mlflow_public_ip": "203.0.113.10",
            "mlflow_private_ip": "10.0.1.10",
            "mlflow_aws_region": "eu-west-1",
            "mlflow_url": "https://ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
            "mlflow_drain_seconds": 0,
            "mlflow_ssh_host_key": "",
        }

    return expected


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own STACK or credentials folder must not leak into a test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def outputs() -> dict[str, Any]:
    """A fresh copy of a valid outputs object, for a test to modify."""
    return copy.deepcopy(BASE_OUTPUTS)


@pytest.fixture
def second_host() -> dict[str, str]:
    return {
        "name": "mlflow-dev-2",
        "public_ip": "203.0.113.11",
        "private_ip": "10.0.1.11",
        "public_dns": "ec2-203-0-113-11.eu-west-1.compute.amazonaws.com",
    }


@pytest.fixture
def write_outputs(tmp_path: Path) -> Callable[..., Path]:
    def write(data: object, name: str = "outputs.json") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a plugin config file in tmp_path/inventory (credentials in tmp_path/creds)."""

    def write(
        name: str = "pulumi_stack.yml", *, credentials_dir: str = "../creds", **options: object
    ) -> Path:
        folder = tmp_path / "inventory"
        folder.mkdir(exist_ok=True)
        lines = ["plugin: pulumi_stack", f"credentials_dir: {credentials_dir}"]
        lines += [f"{key}: {json.dumps(value)}" for key, value in options.items()]
        path = folder / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def fake_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Put a stand-in `pulumi` alone on PATH (no CLI can be installed here).

    It prints the given stdout/stderr, exits with the given code and records its arguments
    and working directory in the returned log file.
    """

    def install(stdout: str = "", stderr: str = "", exit_code: int = 0) -> Path:
        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        log = tmp_path / "pulumi-calls.json"
        script = bin_dir / "pulumi"
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"open({str(log)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], "
            "'cwd': os.getcwd(), 'stdin_tty': os.isatty(0)}))\n"
            f"sys.stdout.write({stdout!r})\n"
            f"sys.stderr.write({stderr!r})\n"
            f"sys.exit({exit_code})\n",
            encoding="utf-8",
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", str(bin_dir))
        return log

    return install


@pytest.fixture
def no_pulumi_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
