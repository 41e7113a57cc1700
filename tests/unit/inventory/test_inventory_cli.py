"""The real commands: `ansible-inventory` on the committed config, as `make configure` runs it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
ANSIBLE_DIR = REPO_ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent


def run(
    args: list[str], env: dict[str, str], cwd: Path = ANSIBLE_DIR
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus anything that would pick another stack or config."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MLFLOW_AWS_"))}
    base.pop("STACK", None)
    return base | {
        "MLFLOW_AWS_CREDENTIALS_DIR": str(tmp_path / "creds"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "HOME": str(tmp_path),  # keep ~/.ansible of the test run out of the operator's home
    }


def unsafe_values(value: Any) -> Any:
    """Undo `ansible-inventory --list`'s {"__ansible_unsafe": v} marking of untrusted strings."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unsafe_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe_values(v) for v in value]
    return value


def test_graph_of_two_hosts(
    env: dict[str, str],
    write_outputs: Callable[..., Path],
    outputs: dict[str, Any],
    second_host: dict[str, str],
) -> None:
    outputs["hosts"].append(second_host)
    env["MLFLOW_AWS_OUTPUTS_FILE"] = str(write_outputs(outputs))
    result = run([str(VENV_BIN / "ansible-inventory"), "--graph"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "@all:",
        "  |--@ungrouped:",
        "  |--@mlflow:",
        "  |  |--mlflow-dev-1",
        "  |  |--mlflow-dev-2",
    ]


def test_list_with_host_vars_and_key_file(
    env: dict[str, str], write_outputs: Callable[..., Path], outputs: dict[str, Any], tmp_path: Path
) -> None:
    env["MLFLOW_AWS_OUTPUTS_FILE"] = str(write_outputs(outputs))
    env["STACK"] = "staging"
    result = run([str(VENV_BIN / "ansible-inventory"), "--list"], env)
    assert result.returncode == 0, result.stderr
    listing = unsafe_values(json.loads(result.stdout))
    assert listing["mlflow"] == {"hosts": ["mlflow-dev-1"]}
    host_vars = listing["_meta"]["hostvars"]["mlflow-dev-1"]
    stack_dir = tmp_path / "creds" / "staging"
    assert host_vars["ansible_host"] == "203.0.113.10"
    assert host_vars["ansible_user"] == "ubuntu"
    assert host_vars["mlflow_stack"] == "staging"
    assert host_vars["mlflow_db_dsn"] == outputs["db_dsn"]
    assert host_vars["ansible_ssh_private_key_file"] == str(stack_dir / "ssh_key")
    assert (stack_dir / "ssh_key").read_text() == outputs["ssh_private_key"] + "\n"
    assert stat.S_IMODE((stack_dir / "ssh_key").stat().st_mode) == 0o600


def test_bad_source_fails_with_the_plugins_message(env: dict[str, str], tmp_path: Path) -> None:
    env["MLFLOW_AWS_OUTPUTS_FILE"] = str(tmp_path / "missing.json")
    result = run([str(VENV_BIN / "ansible-inventory"), "--graph"], env)
    assert result.returncode != 0
    assert f"outputs file {tmp_path}/missing.json does not exist: save it with" in result.stderr
    assert "Completely failed to parse inventory source" in result.stderr


def test_missing_pulumi_cli_through_ansible(env: dict[str, str], tmp_path: Path) -> None:
    env["PATH"] = str(tmp_path / "empty-bin")  # the venv's tools are called by full path
    result = run([str(VENV_BIN / "ansible-inventory"), "--graph"], env)
    assert result.returncode != 0
    assert "the Pulumi CLI `pulumi` is not on PATH: install it" in result.stderr


def test_plugin_documentation_is_valid(env: dict[str, str]) -> None:
    result = run([str(VENV_BIN / "ansible-doc"), "-t", "inventory", "pulumi_stack"], env)
    assert result.returncode == 0, result.stderr
    for option in ("stack", "project_dir", "outputs_file", "credentials_dir", "keyed_groups"):
        assert option in result.stdout
