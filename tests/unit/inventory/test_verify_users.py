"""`make verify` reads each user's role from mlflow_users, and checks users where it lets them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inventory_plugin import verify


def users_file(tmp_path: Path, users: object) -> Path:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"mlflow_users": users}))
    return path


def test_roles_default_to_write(tmp_path: Path) -> None:
    path = users_file(
        tmp_path,
        [
            {"name": "team"},
            {"name": "scraper", "role": "metrics"},
            {"name": "viewer", "role": "read"},
        ],
    )
    assert verify.configured_users(path) == {
        "team": "write",
        "scraper": "metrics",
        "viewer": "read",
    }


def test_no_users_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = users_file(tmp_path, [])
    with pytest.raises(verify.CredentialsError, match=f"no users in mlflow_users of {path}"):
        verify.configured_users(path)


def test_the_roundtrip_runs_as_a_user_who_may_write(monkeypatch: pytest.MonkeyPatch) -> None:
    target = verify.Target(
        "https://203.0.113.10",
        True,
        {"scraper": "a" * 32, "viewer": "b" * 32, "team": "c" * 32},
        {"scraper": "metrics", "viewer": "read"},
    )
    used: list[str] = []
    monkeypatch.setattr(verify.Api, "__init__", lambda self, _target, user: used.append(user))
    monkeypatch.setattr(verify.Report, "check", lambda self, name, run: None)
    verify.run_checks(target, verify.Report())
    assert used == ["team"]
