"""Role variables: meta/argument_specs.yml is their one source (type, default, description);
defaults/main.yml holds the same defaults for Ansible and each README's table is generated."""

from __future__ import annotations

from pathlib import Path

import pytest
from source_file import REPO, load

tables = load("role_tables", "ansible/role_tables.py")
ROLES = tables.roles()


def test_every_role_has_argument_specs() -> None:
    every_role = {path.name for path in (REPO / "ansible" / "roles").iterdir() if path.is_dir()}
    assert {role.name for role in ROLES} == every_role
    assert {"python", "mlflow", "nginx_basic_auth", "systemd", "ssh_hardening"} <= every_role


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_readme_table_matches_argument_specs(role: Path) -> None:
    readme = (role / "README.md").read_text()
    assert tables.readme_block(readme) == tables.render(role), (
        f"{role.name}/README.md variable table out of date: run `make docs`"
    )


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_defaults_equal_argument_spec_defaults(role: Path) -> None:
    options, defaults = tables.load_options(role), tables.load_defaults(role)
    assert set(defaults) <= set(options), "a default without an argument spec"
    for name, value in defaults.items():
        spec = options[name]
        if "default" in spec:
            assert value == spec["default"], name
        else:  # derived from other variables at run time: documented, not repeated
            assert "{{" in repr(value), f"{name}: add its default to the argument spec"
    for name, spec in options.items():
        assert spec.get("description"), f"{name}: no description"
        assert spec.get("type"), f"{name}: no type"
        if "default" in spec:
            assert name in defaults, f"{name}: its default belongs in defaults/main.yml too"


def test_mlflow_version_is_defined_once() -> None:
    """The client's pins follow the server's release (the role default)."""
    version = tables.load_defaults(REPO / "ansible" / "roles" / "mlflow")["mlflow_version"]
    for name in ("requirements-client.txt", "constraints-client.txt", "constraints.txt"):
        pins = (REPO / name).read_text().splitlines()
        assert f"mlflow-skinny=={version}" in pins, name
