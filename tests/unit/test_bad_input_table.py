"""Bad input at the unit level: the inventory plugin's configuration file and the Pulumi
settings of the database backups (the end-to-end table is tests/integration/test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import ansible.constants as C
import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader

from infra.settings import SettingsError, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> object:
    inventory_loader.add_directory(str(REPO_ROOT / "inventory_plugin"))
    monkeypatch.setattr(C, "INVENTORY_ENABLED", ["pulumi_stack"])
    for name in ("STACK", "MLFLOW_AWS_OUTPUTS_FILE", "MLFLOW_AWS_CREDENTIALS_DIR"):
        monkeypatch.delenv(name, raising=False)
    return inventory_loader.get("pulumi_stack")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("plugin: pulumi_stack\nstak: prod\n", "stak"),
        (
            "plugin: pulumi_stack\noutput_file: o.json\ncredential_dir: c\n",
            "credential_dir, output_file",
        ),
    ],
)
def test_plugin_refuses_unknown_options(
    plugin: object, tmp_path: Path, config: str, named: str
) -> None:
    path = tmp_path / "pulumi_stack.yml"
    path.write_text(config)
    with pytest.raises(AnsibleParserError) as info:
        plugin.parse(InventoryData(), DataLoader(), str(path))  # type: ignore[attr-defined]
    message = info.value.message
    assert f"unknown option(s) {named} for the pulumi_stack plugin" in message
    assert "outputs_file" in message  # the known ones are listed
    assert not (tmp_path / ".credentials").exists()


@pytest.mark.parametrize("prefix", ["backups", "backups/mlflow"])
def test_artifact_prefix_cannot_be_the_backups_prefix(prefix: str) -> None:
    values = {"aws:region": "eu-west-1", "sshAllowedCidrs": ["198.51.100.7/32"]}
    with pytest.raises(SettingsError, match=f"artifactPrefix '{prefix}' is not allowed: backups/"):
        StackSettings.from_mapping({**values, "artifactPrefix": prefix})
    assert StackSettings.from_mapping({**values, "artifactPrefix": "backups-x"})
