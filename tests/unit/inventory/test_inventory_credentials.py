"""`python -m inventory_plugin.credentials`: the export lines a client needs (make credentials)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inventory_plugin import credentials

REPO_ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "It's a $ecret `pass` \\ word"  # everything a shell would otherwise interpret


@pytest.fixture
def stack(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_outputs: Callable[..., Path],
    outputs: dict[str, Any],
) -> Path:
    """A configured 'dev' stack: outputs file, users in group_vars, team's password file."""
    monkeypatch.setenv("MLFLOW_AWS_OUTPUTS_FILE", str(write_outputs(outputs)))
    monkeypatch.setenv("MLFLOW_AWS_CREDENTIALS_DIR", str(tmp_path / "creds"))
    group_vars = tmp_path / "all.yml"
    group_vars.write_text("mlflow_users:\n  - name: team\n  - name: ci\n", encoding="utf-8")
    monkeypatch.setattr(credentials, "GROUP_VARS_FILE", group_vars)
    stack_dir = tmp_path / "creds" / "dev"
    (stack_dir / "users").mkdir(parents=True)
    (stack_dir / "users" / "team.password").write_text(PASSWORD + "\n", encoding="utf-8")
    return stack_dir


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = credentials.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def shell_values(lines: str) -> dict[str, str]:
    """What a shell gets from `eval "$(make credentials)"`."""
    script = (
        'eval "$EXPORTS"; for v in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME '
        "MLFLOW_TRACKING_PASSWORD MLFLOW_TRACKING_SERVER_CERT_PATH; do "
        'if [ -n "${!v+set}" ]; then printf "%s=%s\\0" "$v" "${!v}"; fi; done'
    )
    env = {"PATH": os.environ["PATH"], "EXPORTS": lines, "MLFLOW_TRACKING_SERVER_CERT_PATH": "old"}
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def test_exports_for_the_first_user_with_the_certificate(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (stack / "mlflow-dev-1.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    code, out, err = run_main([], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "export MLFLOW_TRACKING_URI=https://ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
        "export MLFLOW_TRACKING_USERNAME=team",
        "export MLFLOW_TRACKING_PASSWORD='It'\"'\"'s a $ecret `pass` \\ word'",
        f"export MLFLOW_TRACKING_SERVER_CERT_PATH={stack}/mlflow-dev-1.crt",
    ]
    assert shell_values(out) == {
        "MLFLOW_TRACKING_URI": "https://ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
        "MLFLOW_TRACKING_USERNAME": "team",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "MLFLOW_TRACKING_SERVER_CERT_PATH": f"{stack}/mlflow-dev-1.crt",
    }


def test_without_a_certificate_file_no_cert_path(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main([], capsys)
    assert code == 0
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH=" not in out
    assert out.splitlines()[-1] == "unset MLFLOW_TRACKING_SERVER_CERT_PATH"
    # A path left in the shell by another stack is dropped.
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" not in shell_values(out)


LB_PEM = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def behind_a_load_balancer(
    outputs: dict[str, Any], write_outputs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs["url"] = "https://mlflow-dev-alb-123.eu-west-1.elb.amazonaws.com"
    outputs["drain_seconds"] = 25
    monkeypatch.setenv("MLFLOW_AWS_OUTPUTS_FILE", str(write_outputs(outputs)))


def test_behind_a_load_balancer_its_certificate_is_pinned(
    stack: Path,
    outputs: dict[str, Any],
    write_outputs: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (stack / "mlflow-dev-1.crt").write_text("-----BEGIN CERTIFICATE-----\nhost\n")
    outputs["ca_certificate"] = LB_PEM
    behind_a_load_balancer(outputs, write_outputs, monkeypatch)
    code, out, _ = run_main([], capsys)
    assert code == 0
    cert = stack / "load-balancer.crt"
    assert shell_values(out)["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(cert)
    assert cert.read_text() == LB_PEM
    assert cert.stat().st_mode & 0o777 == 0o600


def test_behind_a_load_balancer_with_a_ca_signed_certificate_no_cert_path(
    stack: Path,
    outputs: dict[str, Any],
    write_outputs: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (stack / "mlflow-dev-1.crt").write_text("-----BEGIN CERTIFICATE-----\nhost\n")
    behind_a_load_balancer(outputs, write_outputs, monkeypatch)
    code, out, _ = run_main([], capsys)
    assert code == 0
    assert out.splitlines()[-1] == "unset MLFLOW_TRACKING_SERVER_CERT_PATH"


def test_named_user_and_stack(
    stack: Path,
    tmp_path: Path,
    write_outputs: Callable[..., Path],
    outputs: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prod = tmp_path / "creds" / "prod" / "users"
    prod.mkdir(parents=True)
    (prod / "ci.password").write_text("Abc123xyz")
    outputs["url"] = "https://mlflow.example.com"
    prod_outputs = write_outputs(outputs, name="prod.json")
    args = ["--stack", "prod", "--user", "ci", "--outputs-file", str(prod_outputs)]
    code, out, _ = run_main(args, capsys)
    assert code == 0
    assert out.splitlines()[:3] == [
        "export MLFLOW_TRACKING_URI=https://mlflow.example.com",
        "export MLFLOW_TRACKING_USERNAME=ci",
        "export MLFLOW_TRACKING_PASSWORD=Abc123xyz",
    ]


def test_stack_from_the_environment(
    stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STACK", "qa")
    code, _, err = run_main([], capsys)
    assert code == 2
    assert "no password for user 'team' of stack 'qa'" in err


def test_unknown_user(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["--user", "nobody"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"error: no password for user 'nobody' of stack 'dev' ({stack}/users/nobody.password is "
        "missing): run `make configure` first, and check that the user is in mlflow_users\n"
    )


def test_user_name_cannot_leave_the_users_folder(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["--user", "../ssh_key"], capsys)
    assert code == 2
    assert err.startswith("error: invalid user name '../ssh_key'")


@pytest.mark.parametrize(
    "content", ["mlflow_users: []\n", "other: 1\n", "mlflow_users:\n  - {}\n", "", "[1]\n"]
)
def test_no_default_user(
    stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    credentials.GROUP_VARS_FILE.write_text(content)
    code, _, err = run_main([], capsys)
    assert code == 2
    assert err.startswith(f"error: no user in mlflow_users of {tmp_path}/all.yml: declare one")
    assert "--user NAME (make credentials USER=name)" in err


def test_unreadable_group_vars(
    stack: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(credentials, "GROUP_VARS_FILE", tmp_path / "missing.yml")
    code, _, err = run_main([], capsys)
    assert code == 2
    assert err.startswith(f"error: cannot read the users from {tmp_path}/missing.yml")


def test_empty_password_file(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stack / "users" / "team.password").write_text("\n")
    code, _, err = run_main([], capsys)
    assert code == 2
    assert "team.password is empty: run `make rotate USER=team`" in err


def test_outputs_errors_are_reported_the_same_way(
    stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["--outputs-file", str(tmp_path / "nope.json")], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: outputs file {tmp_path}/nope.json does not exist")
    assert err.count("\n") == 1


def test_run_as_a_module(stack: Path) -> None:
    """As `make credentials` runs it: from the repository root, errors exit 2 on stderr."""
    ok = subprocess.run(
        [sys.executable, "-m", "inventory_plugin.credentials", "--user", "team"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "export MLFLOW_TRACKING_USERNAME=team\n" in ok.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "inventory_plugin.credentials", "--user", "ghost"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (failed.returncode, failed.stdout) == (2, "")
    assert "run `make configure` first" in failed.stderr


# ---------------------------------------------------------------- --forget (make rotate)


def test_forget_one_user(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stack / "users" / "ci.password").write_text("keep-me")
    code, out, err = run_main(["--forget", "--user", "team"], capsys)
    assert (code, err) == (0, "")
    assert out == "forgot the password of 'team' (stack dev): the playbook now sets a new one\n"
    assert sorted(p.name for p in (stack / "users").iterdir()) == ["ci.password"]


def test_forget_all_users(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stack / "users" / "ci.password").write_text("x")
    code, out, _ = run_main(["--forget", "--all-users"], capsys)
    assert code == 0
    assert [line.split("'")[1] for line in out.splitlines()] == ["ci", "team"]
    assert list((stack / "users").iterdir()) == []


def test_forget_needs_a_password_file(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["--forget", "--user", "ghost"], capsys)
    assert code == 2
    assert err == (
        f"error: no password of user 'ghost' in {stack}/users to rotate: run `make configure` "
        "first, and check the user name\n"
    )
    (stack / "users" / "team.password").unlink()
    code, _, err = run_main(["--forget", "--all-users"], capsys)
    assert code == 2
    assert "no password of any user" in err


@pytest.mark.parametrize(
    "args", [["--forget"], ["--forget", "--user", "team", "--all-users"], ["--all-users"]]
)
def test_forget_argument_errors(
    stack: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        credentials.main(args)
    assert info.value.code == 2
    assert (stack / "users" / "team.password").is_file()
