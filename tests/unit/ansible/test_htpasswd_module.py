"""The htpasswd module (ansible/library/htpasswd.py), run for real through its main()."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from passlib.context import CryptContext

from tests.unit.ansible.source_file import load

htpasswd = load("mlflow_aws_htpasswd", "ansible/library/htpasswd.py")


def run_module(capsys: pytest.CaptureFixture[str], **args: Any) -> dict[str, Any]:
    """Run main() with `args` as the task's arguments; return the JSON result."""
    with patch_module_args(args), pytest.raises(SystemExit):
        htpasswd.main()
    return json.loads(capsys.readouterr().out)


def verifies(password: str, stored_hash: str) -> bool:
    return CryptContext(schemes=list(htpasswd.SCHEMES)).verify(password, stored_hash)


def entries(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "htpasswd"


def test_creates_the_file_with_one_line_per_user(capsys, path: Path) -> None:
    users = [{"name": "team", "password": "a" * 32}, {"name": "ci", "password": "b" * 32}]

    result = run_module(capsys, path=str(path), users=users)

    assert result["changed"] is True
    assert result["added"] == ["team", "ci"]
    stored = entries(path)
    assert list(stored) == ["team", "ci"]
    assert verifies("a" * 32, stored["team"])
    assert verifies("b" * 32, stored["ci"])


def test_same_password_changes_nothing(capsys, path: Path) -> None:
    users = [{"name": "team", "password": "s3cret-s3cret-s3cret"}]
    run_module(capsys, path=str(path), users=users)
    before = path.read_bytes()
    inode = path.stat().st_ino

    result = run_module(capsys, path=str(path), users=users)

    assert result["changed"] is False
    assert (result["added"], result["updated"], result["removed"]) == ([], [], [])
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode


def test_new_password_rewrites_only_that_entry(capsys, path: Path) -> None:
    run_module(
        capsys,
        path=str(path),
        users=[
            {"name": "team", "password": "old-password-123"},
            {"name": "ci", "password": "x" * 20},
        ],
    )
    ci_before = entries(path)["ci"]

    result = run_module(
        capsys,
        path=str(path),
        users=[
            {"name": "team", "password": "new-password-456"},
            {"name": "ci", "password": "x" * 20},
        ],
    )

    assert result["changed"] is True
    assert result["updated"] == ["team"]
    stored = entries(path)
    assert verifies("new-password-456", stored["team"])
    assert not verifies("old-password-123", stored["team"])
    assert stored["ci"] == ci_before


def test_exclusive_removes_unlisted_users(capsys, path: Path) -> None:
    users = [{"name": "team", "password": "p" * 16}, {"name": "gone", "password": "q" * 16}]
    run_module(capsys, path=str(path), users=users)

    result = run_module(capsys, path=str(path), users=users[:1])

    assert result["changed"] is True
    assert result["removed"] == ["gone"]
    assert list(entries(path)) == ["team"]


def test_not_exclusive_keeps_unlisted_users(capsys, path: Path) -> None:
    path.write_text("other:$apr1$abcdefgh$0123456789012345678901\n")

    result = run_module(
        capsys, path=str(path), users=[{"name": "team", "password": "p" * 16}], exclusive=False
    )

    assert result["removed"] == []
    assert list(entries(path)) == ["other", "team"]


def test_mode_is_applied_to_new_and_existing_files(capsys, path: Path) -> None:
    users = [{"name": "team", "password": "p" * 16}]
    run_module(capsys, path=str(path), users=users, mode="0640")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

    result = run_module(capsys, path=str(path), users=users, mode="0600")

    assert result["changed"] is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rewrite_keeps_the_files_mode(capsys, path: Path) -> None:
    run_module(capsys, path=str(path), users=[{"name": "team", "password": "p" * 16}], mode="0640")

    run_module(capsys, path=str(path), users=[{"name": "team", "password": "r" * 16}])

    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("scheme", "prefix"),
    [
        ("sha512_crypt", "$6$"),
        ("sha256_crypt", "$5$"),
        ("bcrypt", "$2y$"),
        ("apr_md5_crypt", "$apr1$"),
    ],
)
def test_scheme_sets_the_hash_prefix(capsys, path: Path, scheme: str, prefix: str) -> None:
    rounds = 4 if scheme == "bcrypt" else None
    run_module(
        capsys,
        path=str(path),
        users=[{"name": "u", "password": "p" * 16}],
        scheme=scheme,
        rounds=rounds,
    )

    assert entries(path)["u"].startswith(prefix)


def test_default_is_sha512_crypt_with_crypt3_default_rounds(capsys, path: Path) -> None:
    run_module(capsys, path=str(path), users=[{"name": "u", "password": "p" * 16}])

    stored = entries(path)["u"]
    # 5000 rounds is crypt(3)'s implicit default, so the hash does not spell it out.
    assert stored.startswith("$6$")
    assert "rounds=" not in stored


def test_changed_scheme_or_rounds_rewrites_the_hash(capsys, path: Path) -> None:
    users = [{"name": "u", "password": "p" * 16}]
    run_module(capsys, path=str(path), users=users, scheme="apr_md5_crypt")

    result = run_module(capsys, path=str(path), users=users, rounds=1000)

    assert result["updated"] == ["u"]
    assert entries(path)["u"].startswith("$6$rounds=1000$")
    assert run_module(capsys, path=str(path), users=users, rounds=1000)["changed"] is False


def test_hash_verifies_with_the_systems_crypt(capsys, path: Path) -> None:
    """nginx checks passwords with crypt(3): the written hash must verify there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    run_module(capsys, path=str(path), users=[{"name": "u", "password": "Abc123" * 5}])

    stored = entries(path)["u"]

    assert crypt.crypt("Abc123" * 5, stored) == stored


def test_atomic_write_leaves_no_temporary_files(capsys, path: Path) -> None:
    run_module(capsys, path=str(path), users=[{"name": "u", "password": "p" * 16}])
    inode = path.stat().st_ino

    run_module(capsys, path=str(path), users=[{"name": "u", "password": "n" * 16}])

    assert sorted(os.listdir(path.parent)) == ["htpasswd"]
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place


def test_check_mode_reports_without_writing(capsys, path: Path) -> None:
    result = run_module(
        capsys,
        path=str(path),
        users=[{"name": "u", "password": "p" * 16}],
        _ansible_check_mode=True,
    )

    assert result["changed"] is True
    assert result["added"] == ["u"]
    assert not path.exists()


def test_result_never_contains_passwords_or_hashes(capsys, path: Path) -> None:
    password = "VerySecretPassword1234"
    first = run_module(capsys, path=str(path), users=[{"name": "u", "password": password}])
    second = run_module(capsys, path=str(path), users=[{"name": "u", "password": password + "x"}])

    for result in (first, second):
        text = json.dumps(result)
        assert password not in text
        assert entries(path)["u"] not in text


def test_comments_are_kept(capsys, path: Path) -> None:
    path.write_text("# managed by mlflow-aws\n")

    run_module(capsys, path=str(path), users=[{"name": "u", "password": "p" * 16}])

    assert path.read_text().splitlines()[0] == "# managed by mlflow-aws"


@pytest.mark.parametrize("name", ["bad:name", "with space", ""])
def test_invalid_user_names_fail(capsys, path: Path, name: str) -> None:
    result = run_module(capsys, path=str(path), users=[{"name": name, "password": "p" * 16}])

    assert result["failed"] is True
    assert "invalid user name" in result["msg"]
    assert not path.exists()


def test_duplicate_user_names_fail(capsys, path: Path) -> None:
    users = [{"name": "u", "password": "p" * 16}, {"name": "u", "password": "q" * 16}]

    result = run_module(capsys, path=str(path), users=users)

    assert result["failed"] is True
    assert "listed twice" in result["msg"]


def test_missing_directory_fails_clearly(capsys, tmp_path: Path) -> None:
    result = run_module(
        capsys,
        path=str(tmp_path / "nope" / "htpasswd"),
        users=[{"name": "u", "password": "p" * 16}],
    )

    assert result["failed"] is True
    assert "does not exist" in result["msg"]


def test_runs_as_an_ansible_module(path: Path) -> None:
    """End to end through ansible's own module loading (ANSIBLE_LIBRARY), as on a target."""
    env = {
        **{key: value for key, value in os.environ.items() if key != "ANSIBLE_CONFIG"},
        "ANSIBLE_LIBRARY": str(Path(htpasswd.__file__).parent),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    args = json.dumps({"path": str(path), "users": [{"name": "u", "password": "p" * 16}]})
    ansible = str(Path(sys.executable).parent / "ansible")
    command = [ansible, "localhost", "-i", "localhost,", "-c", "local", "-o", "-m", "htpasswd"]

    completed = subprocess.run(
        [*command, "-a", args],
        env=env,
        cwd=path.parent,  # no ansible.cfg there
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("localhost | CHANGED => ")
    result = json.loads(completed.stdout.partition(" => ")[2])
    assert result["changed"] is True
    assert result["added"] == ["u"]
    assert "p" * 16 not in completed.stdout
    assert verifies("p" * 16, entries(path)["u"])
