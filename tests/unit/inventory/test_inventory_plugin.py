"""The plugin run by Ansible's own inventory machinery (InventoryManager, plugin loader)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible.constants as C
import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from ansible.template import Templar, is_trusted_as_template, trust_as_template

REPO_ROOT = Path(__file__).resolve().parents[3]
DB_PASSWORD = "dbS3cretPassw0rd"

WriteConfig = Callable[..., Path]
WriteOutputs = Callable[..., Path]
ExpectedHostVars = Callable[[Path, Path], dict[str, Any]]


@pytest.fixture(autouse=True)
def plugin_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ansible/ansible.cfg does: inventory_plugins and enable_plugins."""
    inventory_loader.add_directory(str(REPO_ROOT / "inventory_plugin"))
    monkeypatch.setattr(C, "INVENTORY_ENABLED", ["pulumi_stack"])


def load_inventory(config: Path) -> InventoryManager:
    return InventoryManager(loader=DataLoader(), sources=[str(config)])


def parse_error(config: Path) -> str:
    """The message the plugin raises (InventoryManager would turn it into a warning)."""
    plugin = inventory_loader.get("pulumi_stack")
    assert plugin.verify_file(str(config))
    with pytest.raises(AnsibleParserError) as info:
        plugin.parse(InventoryData(), DataLoader(), str(config))
    return info.value.message


def host_vars(inventory: InventoryManager, name: str) -> dict[str, Any]:
    return inventory.get_host(name).get_vars()


def test_one_host_with_its_vars(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    tmp_path: Path,
    expected_host_vars: ExpectedHostVars,
) -> None:
    write_outputs(outputs)
    inventory = load_inventory(write_config(outputs_file="../outputs.json"))
    assert [h.name for h in inventory.get_hosts("mlflow")] == ["mlflow-dev-1"]
    stack_dir = tmp_path / "creds" / "dev"
    assert host_vars(inventory, "mlflow-dev-1") | {
        "inventory_file": None,
        "inventory_dir": None,
    } == {
        "inventory_file": None,
        "inventory_dir": None,
        "inventory_hostname": "mlflow-dev-1",
        "inventory_hostname_short": "mlflow-dev-1",
        "group_names": ["mlflow"],
        **expected_host_vars(stack_dir, stack_dir / "ssh_key"),
    }
    key_file = stack_dir / "ssh_key"
    assert key_file.read_text() == outputs["ssh_private_key"] + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack_dir.stat().st_mode) == 0o700


def test_two_hosts_share_the_stack_settings(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    second_host: dict[str, str],
) -> None:
    outputs["hosts"].append(second_host)
    write_outputs(outputs)
    inventory = load_inventory(write_config(outputs_file="../outputs.json"))
    assert sorted(h.name for h in inventory.get_hosts("mlflow")) == ["mlflow-dev-1", "mlflow-dev-2"]
    first, second = host_vars(inventory, "mlflow-dev-1"), host_vars(inventory, "mlflow-dev-2")
    assert (first["ansible_host"], second["ansible_host"]) == ("203.0.113.10", "203.0.113.11")
    assert second["mlflow_private_ip"] == "10.0.1.11"
    assert second["mlflow_public_dns"] == "ec2-203-0-113-11.eu-west-1.compute.amazonaws.com"
    for name in ("ansible_ssh_private_key_file", "mlflow_db_dsn", "mlflow_url", "ansible_user"):
        assert first[name] == second[name]


def test_key_file_is_not_rewritten_when_unchanged_and_updated_when_changed(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any], tmp_path: Path
) -> None:
    write_outputs(outputs)
    config = write_config(outputs_file="../outputs.json")
    load_inventory(config)
    key_file = tmp_path / "creds" / "dev" / "ssh_key"
    inode = key_file.stat().st_ino
    os.utime(key_file, ns=(10**9, 10**9))  # a rewrite would show as a new mtime and inode
    load_inventory(config)
    assert (key_file.stat().st_ino, key_file.stat().st_mtime_ns) == (inode, 10**9)

    outputs["ssh_private_key"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nnew\n"
    write_outputs(outputs)
    load_inventory(config)
    assert key_file.read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\nnew\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_without_a_stack_key_the_operators_own_key_is_used(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any], tmp_path: Path
) -> None:
    del outputs["ssh_private_key"]
    write_outputs(outputs)
    inventory = load_inventory(write_config(outputs_file="../outputs.json"))
    variables = host_vars(inventory, "mlflow-dev-1")
    assert "ansible_ssh_private_key_file" not in variables
    assert variables["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={tmp_path}/creds/dev/known_hosts"
    )
    assert not (tmp_path / "creds" / "dev" / "ssh_key").exists()
    assert (tmp_path / "creds" / "dev").is_dir()  # known_hosts goes there


def test_s3_settings_pass_through(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any]
) -> None:
    outputs |= {
        "s3_endpoint_url": "http://10.77.0.1:55900",
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing-secret",
    }
    write_outputs(outputs)
    variables = host_vars(
        load_inventory(write_config(outputs_file="../outputs.json")), "mlflow-dev-1"
    )
    assert variables["mlflow_s3_endpoint_url"] == "http://10.77.0.1:55900"
    assert variables["mlflow_s3_access_key_id"] == "testing"
    assert variables["mlflow_s3_secret_access_key"] == "testing-secret"


def test_outputs_are_never_templated(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any]
) -> None:
    # A password may contain Jinja syntax: it must reach the host as written, never as "42".
    outputs["db_dsn"] = "postgresql://mlflow:{{ 6 * 7 }}@db/mlflow"
    write_outputs(outputs)
    inventory = load_inventory(write_config(outputs_file="../outputs.json"))
    variables = host_vars(inventory, "mlflow-dev-1")
    assert not is_trusted_as_template(variables["mlflow_db_dsn"])
    templar = Templar(loader=DataLoader(), variables=variables)
    # As a playbook would use it: a trusted template that refers to the variable.
    rendered = templar.template(trust_as_template("{{ mlflow_db_dsn }}"))
    assert rendered == outputs["db_dsn"]
    assert templar.template(rendered) == outputs["db_dsn"]


def test_constructed_groups_and_vars(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any]
) -> None:
    write_outputs(outputs)
    config = write_config(
        outputs_file="../outputs.json",
        keyed_groups=[{"key": "mlflow_aws_region", "prefix": "region"}],
        groups={"tls": "mlflow_url.startswith('https://')"},
        compose={"mlflow_host_label": "inventory_hostname ~ '@' ~ mlflow_aws_region"},
    )
    inventory = load_inventory(config)
    assert [h.name for h in inventory.get_hosts("region_eu_west_1")] == ["mlflow-dev-1"]
    assert [h.name for h in inventory.get_hosts("tls")] == ["mlflow-dev-1"]
    assert host_vars(inventory, "mlflow-dev-1")["mlflow_host_label"] == "mlflow-dev-1@eu-west-1"


# ---------------------------------------------------------------- options and environment


def test_stack_from_the_environment_names_the_credentials_folder(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_outputs(outputs)
    monkeypatch.setenv("STACK", "prod")
    variables = host_vars(
        load_inventory(write_config(outputs_file="../outputs.json")), "mlflow-dev-1"
    )
    assert variables["mlflow_stack"] == "prod"
    assert variables["mlflow_credentials_dir"] == str(tmp_path / "creds" / "prod")
    assert (tmp_path / "creds" / "prod" / "ssh_key").is_file()


def test_stack_in_the_config_file_wins_over_the_environment(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_outputs(outputs)
    monkeypatch.setenv("STACK", "prod")
    config = write_config(outputs_file="../outputs.json", stack="staging")
    assert host_vars(load_inventory(config), "mlflow-dev-1")["mlflow_stack"] == "staging"


def test_outputs_file_from_the_environment_wins_over_the_config_file(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    second_host: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_outputs(outputs)
    outputs["hosts"] = [second_host]
    env_file = write_outputs(outputs, name="from-env.json")
    monkeypatch.setenv("MLFLOW_AWS_OUTPUTS_FILE", str(env_file))
    inventory = load_inventory(write_config(outputs_file="../outputs.json"))
    assert [h.name for h in inventory.get_hosts("mlflow")] == ["mlflow-dev-2"]


def test_credentials_dir_from_the_environment(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_outputs(outputs)
    config = tmp_path / "inventory" / "pulumi_stack.yaml"
    config.parent.mkdir()
    config.write_text("plugin: pulumi_stack\noutputs_file: ../outputs.json\n")
    monkeypatch.setenv("MLFLOW_AWS_CREDENTIALS_DIR", str(tmp_path / "env-creds"))
    variables = host_vars(load_inventory(config), "mlflow-dev-1")
    assert variables["mlflow_credentials_dir"] == str(tmp_path / "env-creds" / "dev")
    assert (tmp_path / "env-creds" / "dev" / "ssh_key").is_file()


def test_verify_file_accepts_only_this_plugins_config_names(tmp_path: Path) -> None:
    plugin = inventory_loader.get("pulumi_stack")
    for name in ("pulumi_stack.yml", "prod.pulumi_stack.yaml", "hosts.yml", "pulumi_stack.json"):
        (tmp_path / name).write_text("plugin: pulumi_stack\n")
    assert plugin.verify_file(str(tmp_path / "pulumi_stack.yml"))
    assert plugin.verify_file(str(tmp_path / "prod.pulumi_stack.yaml"))
    assert not plugin.verify_file(str(tmp_path / "hosts.yml"))
    assert not plugin.verify_file(str(tmp_path / "pulumi_stack.json"))
    assert not plugin.verify_file(str(tmp_path / "missing.pulumi_stack.yml"))


# ---------------------------------------------------------------- reading through pulumi


def test_outputs_read_with_pulumi_in_the_project_dir(
    write_config: WriteConfig,
    outputs: dict[str, Any],
    fake_pulumi: Callable[..., Path],
    tmp_path: Path,
) -> None:
    (tmp_path / "project").mkdir()
    log = fake_pulumi(stdout=json.dumps(outputs))
    inventory = load_inventory(write_config(project_dir="../project", stack="qa"))
    assert host_vars(inventory, "mlflow-dev-1")["mlflow_stack"] == "qa"
    call = json.loads(log.read_text())
    assert call["argv"] == [
        "stack",
        *("output", "--json", "--show-secrets", "--non-interactive", "--color", "never"),
        *("--stack", "qa"),
    ]
    assert call["cwd"] == str(tmp_path / "project")
    assert call["stdin_tty"] is False


def test_pulumi_runs_in_the_repository_root_by_default(
    write_config: WriteConfig, outputs: dict[str, Any], fake_pulumi: Callable[..., Path]
) -> None:
    log = fake_pulumi(stdout=json.dumps(outputs))
    load_inventory(write_config())
    assert json.loads(log.read_text())["cwd"] == str(REPO_ROOT)


# ---------------------------------------------------------------- every error, one message


@pytest.mark.usefixtures("no_pulumi_on_path")
def test_missing_pulumi_cli(write_config: WriteConfig) -> None:
    assert parse_error(write_config()) == (
        "the Pulumi CLI `pulumi` is not on PATH: install it (https://www.pulumi.com/docs/install/),"
        " or set MLFLOW_AWS_OUTPUTS_FILE (or the 'outputs_file' option) to a file saved with "
        "`pulumi stack output --json --show-secrets`"
    )


def test_unknown_stack(write_config: WriteConfig, fake_pulumi: Callable[..., Path]) -> None:
    fake_pulumi(stderr="error: no stack named 'x' found\n", exit_code=255)
    message = parse_error(write_config(stack="x"))
    assert message.startswith(f"Pulumi stack 'x' does not exist in {REPO_ROOT}: ")
    assert "`make infra STACK=x`" in message


def test_other_pulumi_failure_shows_its_stderr(
    write_config: WriteConfig, fake_pulumi: Callable[..., Path]
) -> None:
    fake_pulumi(
        stderr="error: getting secrets manager: passphrase must be set with "
        "PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables\n",
        exit_code=255,
    )
    assert parse_error(write_config()) == (
        f"`pulumi stack output --stack dev` failed in {REPO_ROOT} (exit 255): error: getting "
        "secrets manager: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
        "PULUMI_CONFIG_PASSPHRASE_FILE environment variables"
    )


def test_pulumi_printing_no_json(
    write_config: WriteConfig, fake_pulumi: Callable[..., Path]
) -> None:
    fake_pulumi(stdout=f"db_dsn postgresql://mlflow:{DB_PASSWORD}@db/mlflow\n")
    message = parse_error(write_config())
    assert message.startswith("Pulumi stack 'dev': not valid JSON (Expecting value")
    assert "`make infra STACK=dev`" in message
    assert DB_PASSWORD not in message


def test_stack_without_outputs(write_config: WriteConfig, fake_pulumi: Callable[..., Path]) -> None:
    fake_pulumi(stdout="{}\n")
    assert parse_error(write_config()) == (
        "Pulumi stack 'dev': required output(s) 'hosts', 'ssh_user', 'db_dsn', "
        "'artifacts_destination', 'region', 'url' missing; run `make infra STACK=dev` so the "
        "stack exports the outputs of this version"
    )


def test_project_dir_that_does_not_exist(
    write_config: WriteConfig, fake_pulumi: Callable[..., Path], tmp_path: Path
) -> None:
    fake_pulumi(stdout="{}")
    assert parse_error(write_config(project_dir="../nowhere")) == (
        f"project_dir {tmp_path}/nowhere is not a directory: set 'project_dir' to the folder "
        "holding Pulumi.yaml"
    )


def test_outputs_file_not_found(write_config: WriteConfig, tmp_path: Path) -> None:
    message = parse_error(write_config(outputs_file="../missing.json"))
    assert message.startswith(f"outputs file {tmp_path}/missing.json does not exist: save it with ")


@pytest.mark.parametrize(
    "name", ["hosts", "ssh_user", "db_dsn", "artifacts_destination", "region", "url"]
)
def test_missing_output_in_the_file(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    tmp_path: Path,
    name: str,
) -> None:
    del outputs[name]
    write_outputs(outputs)
    assert parse_error(write_config(outputs_file="../outputs.json")) == (
        f"outputs file {tmp_path}/outputs.json: required output(s) '{name}' missing; fix the file"
        " or save it again with `pulumi stack output --json --show-secrets --stack dev > "
        f"{tmp_path}/outputs.json`"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON (Expecting value at line 1 column 1)"),
        ('["hosts"]', "expected a JSON object of stack outputs, got a list"),
        ({"hosts": []}, "output 'hosts' must be a non-empty list of hosts, got an empty list"),
        (
            {"hosts": "mlflow-dev-1"},
            "output 'hosts' must be a non-empty list of hosts, got a string",
        ),
        ({"hosts": [{"public_ip": "203.0.113.10"}]}, "hosts[0] has no 'name'"),
        ({"hosts": [{"name": "mlflow-dev-1"}]}, "hosts[0] has no 'public_ip'"),
        ({"ssh_user": 0}, "output 'ssh_user' must be a non-empty string, got a number"),
    ],
)
def test_malformed_file(
    write_config: WriteConfig,
    write_outputs: WriteOutputs,
    outputs: dict[str, Any],
    tmp_path: Path,
    content: str | dict[str, Any],
    problem: str,
) -> None:
    write_outputs(content if isinstance(content, str) else outputs | content)
    message = parse_error(write_config(outputs_file="../outputs.json"))
    assert message.startswith(f"outputs file {tmp_path}/outputs.json: {problem}; fix the file")
    assert DB_PASSWORD not in message


@pytest.mark.parametrize(("stack", "shown"), [("../../etc", "'../../etc'"), ("", "''")])
def test_invalid_stack_name(
    write_config: WriteConfig, write_outputs: WriteOutputs, stack: str, shown: str
) -> None:
    write_outputs({})
    message = parse_error(write_config(outputs_file="../outputs.json", stack=stack))
    assert message.startswith(f"invalid stack name {shown}: ")


def test_a_broken_source_fails_the_whole_inventory(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ansible.cfg's any_unparsed_is_failed, a bad stack stops the run (no empty inventory)."""
    monkeypatch.setattr(C, "INVENTORY_ANY_UNPARSED_IS_FAILED", True)
    with pytest.raises(Exception, match="Completely failed to parse inventory source"):
        load_inventory(write_config(outputs_file="../missing.json"))


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn8MWxk0ZzCfVkXD1Q8vOnU5J2cO9kRNfBl5TlxiJ3k"
NEW_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJQ2T7fC9Y4bX0Yg1mE3n8u3W0b8S1vP2y5oLzRkq7Tz"


def test_generated_host_keys_are_pinned_before_the_first_connection(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any], tmp_path: Path
) -> None:
    outputs["hosts"][0]["ssh_host_key"] = HOST_KEY + "\n"
    write_outputs(outputs)
    config = write_config(outputs_file="../outputs.json")
    stack_dir = tmp_path / "creds" / "dev"

    variables = host_vars(load_inventory(config), "mlflow-dev-1")

    pinned = stack_dir / "pinned_host_keys"
    assert pinned.read_text() == f"203.0.113.10 {HOST_KEY}\n"
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o600
    assert variables["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={pinned} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    )
    assert variables["mlflow_ssh_host_key"] == HOST_KEY

    # A replaced instance: the outputs carry its new key, pinned on the next read, old one gone.
    outputs["hosts"][0]["ssh_host_key"] = NEW_HOST_KEY
    write_outputs(outputs)
    load_inventory(config)
    assert pinned.read_text() == f"203.0.113.10 {NEW_HOST_KEY}\n"


@pytest.mark.parametrize("bad", ["AAAAC3Nza", "ssh-ed25519", "ssh-ed25519 AAAA AAAA", 42])
def test_a_malformed_host_key_is_refused_naming_the_output(
    write_config: WriteConfig, write_outputs: WriteOutputs, outputs: dict[str, Any], bad: Any
) -> None:
    outputs["hosts"][0]["ssh_host_key"] = bad
    write_outputs(outputs)

    message = parse_error(write_config(outputs_file="../outputs.json"))

    assert "hosts[0].ssh_host_key" in message
