"""Pulumi.yaml, Pulumi.example.yaml and the README table agree with the program."""

from __future__ import annotations

import re

import yaml
from infra_mocks import ROOT

from infra.config_table import load_config_schema, readme_block, render
from infra.settings import DEFAULTS, REQUIRED, StackSettings


def test_project_file_runtime():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "mlflow-aws"
    assert project["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": ".venv"},
    }


def test_every_setting_declared_with_type_default_and_description():
    schema = load_config_schema()
    project_required = [k for k in REQUIRED if ":" not in k]
    assert set(schema) == set(DEFAULTS) | set(project_required)
    for key, spec in schema.items():
        assert spec.get("type") in ("string", "integer", "boolean", "array"), key
        assert spec.get("description", "").strip(), key
    for key in project_required:
        assert "default" not in schema[key], f"{key} is required: no default"
    for key, default in DEFAULTS.items():
        assert schema[key].get("default") == default, f"{key}: Pulumi.yaml vs infra/settings.py"


def test_readme_config_table_matches_pulumi_yaml():
    readme = (ROOT / "README.md").read_text()
    assert readme_block(readme) == render(load_config_schema()), (
        "README table out of date: run `.venv/bin/python -m infra.config_table --write`"
    )


def test_readme_table_lists_every_key_once():
    keys = re.findall(r"^\| `([^`]+)` \|", readme_block((ROOT / "README.md").read_text()), re.M)
    assert sorted(keys) == sorted([*REQUIRED, *DEFAULTS])


def _example_config(uncomment: bool) -> dict:
    text = (ROOT / "Pulumi.example.yaml").read_text()
    if uncomment:  # every commented setting line, as if the user uncommented them all
        text = re.sub(r"^  # (?=[a-z-]+:[A-Za-z]+:|  - )", "  ", text, flags=re.M)
    return yaml.safe_load(text)["config"] or {}


def _as_settings_mapping(config: dict) -> dict:
    return {key.removeprefix("mlflow-aws:"): value for key, value in config.items()}


def test_example_config_names_only_known_settings():
    values = _as_settings_mapping(_example_config(uncomment=True))
    assert set(values) == {*REQUIRED, *DEFAULTS}
    StackSettings.from_mapping(values)  # and every example value is valid


def test_example_config_leaves_required_settings_to_the_user():
    active = _as_settings_mapping(_example_config(uncomment=False))
    assert not set(active) & set(REQUIRED)
