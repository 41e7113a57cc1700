"""Render a role's templates the way the template module does: Ansible's own templar, the role's
defaults and vars (trusted, lazily templated like in a play), the project's filter plugins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import filter_loader, init_plugin_loader
from ansible.template import Templar, trust_as_template

from tests.unit.ansible.source_file import REPO

ROLES = REPO / "ansible" / "roles"
# What a play gives every template: the host's name, facts, the inventory's host vars.
PLAY_VARIABLES: dict[str, Any] = {
    "ansible_managed": "Ansible managed",
    "inventory_hostname": "mlflow-1",
    "ansible_facts": {"all_ipv6_addresses": [], "memtotal_mb": 3828, "processor_vcpus": 2},
    "mlflow_credentials_dir": "/operator/.credentials/dev",
    "mlflow_public_dns": "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
    "mlflow_public_ip": "203.0.113.10",
}

# cache="none" everywhere: DataLoader's cache would hand the trusted and the untrusted reading of a
# file out for one another.
_loader = DataLoader()
init_plugin_loader()
filter_loader.add_directory(str(REPO / "ansible" / "filter_plugins"))


def role_file(role: str, relative: str) -> Path:
    return ROLES / role / relative


def role_defaults(role: str) -> dict[str, Any]:
    """defaults/main.yml as written (strings untemplated)."""
    return dict(_loader.load_from_file(str(role_file(role, "defaults/main.yml")), cache="none"))


def argument_spec_defaults(role: str) -> dict[str, Any]:
    specs = _loader.load_from_file(str(role_file(role, "meta/argument_specs.yml")), cache="none")
    options = specs["argument_specs"]["main"]["options"]
    return {name: spec["default"] for name, spec in options.items() if "default" in spec}


def role_variables(role: str, **overrides: Any) -> dict[str, Any]:
    """A play's variables for the role: play variables < role defaults < role vars < overrides."""
    variables = dict(PLAY_VARIABLES)
    for relative in ("defaults/main.yml", "vars/main.yml"):
        path = role_file(role, relative)
        if path.exists():
            loaded = _loader.load_from_file(str(path), cache="none", trusted_as_template=True)
            variables.update(loaded or {})
    variables.update(overrides)
    return variables


def resolve(role: str, name: str, **overrides: Any) -> Any:
    """The value a role variable has in a play (templated)."""
    templar = Templar(loader=_loader, variables=role_variables(role, **overrides))
    return templar.template(trust_as_template("{{ %s }}" % name))  # noqa: UP031


def render(role: str, template: str, **overrides: Any) -> str:
    """The file the role's template task writes, given the role defaults and the overrides."""
    source = role_file(role, f"templates/{template}").read_text()
    templar = Templar(loader=_loader, variables=role_variables(role, **overrides))
    return str(templar.template(trust_as_template(source), escape_backslashes=False))
