"""The outputs loader's pure functions: validation, error messages, key file, host vars."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.outputs import REQUIRED
from inventory_plugin import pulumi_stack as ps

SOURCE = ps.OutputsSource("outputs file /x/outputs.json", "fix the file")
DB_PASSWORD = "dbS3cretPassw0rd"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def error_for(data: object) -> str:
    with pytest.raises(ps.StackOutputsError) as info:
        ps.validate_outputs(data, SOURCE)
    return str(info.value)


def test_valid_outputs_are_read(outputs: dict[str, Any]) -> None:
    result = ps.validate_outputs(outputs, SOURCE)
    assert result.hosts == (
        ps.StackHost(
            "mlflow-dev-1",
            "203.0.113.10",
            "10.0.1.10",
            "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
        ),
    )
    assert (result.ssh_user, result.region) == ("ubuntu", "eu-west-1")
    assert result.db_dsn == outputs["db_dsn"]
    assert result.ssh_private_key == outputs["ssh_private_key"]
    assert result.s3 == {}


def test_secrets_stay_out_of_repr(outputs: dict[str, Any]) -> None:
    outputs["s3_secret_access_key"] = "s3SecretKeyValue"
    text = repr(ps.validate_outputs(outputs, SOURCE))
    assert DB_PASSWORD not in text
    assert "PRIVATE KEY" not in text
    assert "s3SecretKeyValue" not in text


def test_optional_outputs(outputs: dict[str, Any]) -> None:
    del outputs["ssh_private_key"]
    outputs["s3_endpoint_url"] = "http://10.77.0.1:55900"
    outputs["s3_access_key_id"] = "testing"
    outputs["s3_secret_access_key"] = None
    del outputs["hosts"][0]["private_ip"]
    del outputs["hosts"][0]["public_dns"]
    result = ps.validate_outputs(outputs, SOURCE)
    assert result.ssh_private_key is None
    assert result.s3 == {"s3_endpoint_url": "http://10.77.0.1:55900", "s3_access_key_id": "testing"}
    assert (result.hosts[0].private_ip, result.hosts[0].public_dns) == ("", "")


@pytest.mark.parametrize("name", REQUIRED)
def test_each_missing_output_is_named(outputs: dict[str, Any], name: str) -> None:
    del outputs[name]
    message = error_for(outputs)
    assert f"required output(s) '{name}' missing" in message
    assert message.startswith("outputs file /x/outputs.json: ")
    assert message.endswith("; fix the file")


def test_all_missing_outputs_are_named_in_one_message() -> None:
    message = error_for({"hosts": [], "region": "eu-west-1"})
    assert "'ssh_user', 'db_dsn', 'artifacts_destination', 'url' missing" in message


def bad(change: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """Apply one named breakage to a valid outputs object."""
    host = outputs["hosts"][0]
    match change:
        case "hosts-empty":
            outputs["hosts"] = []
        case "hosts-object":
            outputs["hosts"] = {"name": "x"}
        case "host-string":
            outputs["hosts"] = ["mlflow-dev-1"]
        case "host-no-name":
            del host["name"]
        case "host-no-ip":
            del host["public_ip"]
        case "host-name-number":
            host["name"] = 7
        case "host-name-path":
            host["name"] = "../evil"
        case "host-ip-text":
            host["public_ip"] = "not-an-ip"
        case "host-private-ip":
            host["private_ip"] = "10.0.1"
        case "host-dns-number":
            host["public_dns"] = 1
        case "host-duplicate":
            outputs["hosts"].append(dict(host))
        case "ssh-user-empty":
            outputs["ssh_user"] = ""
        case "url-list":
            outputs["url"] = ["https://x"]
        case "key-number":
            outputs["ssh_private_key"] = 1
        case "s3-bool":
            outputs["s3_endpoint_url"] = True
    return outputs


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("hosts-empty", "output 'hosts' must be a non-empty list of hosts, got an empty list"),
        ("hosts-object", "output 'hosts' must be a non-empty list of hosts, got an object"),
        ("host-string", "hosts[0] must be an object, got a string"),
        ("host-no-name", "hosts[0] has no 'name'"),
        ("host-no-ip", "hosts[0] has no 'public_ip'"),
        ("host-name-number", "hosts[0].name must be a non-empty string, got a number"),
        (
            "host-name-path",
            "hosts[0].name '../evil' is not a host name (letters, digits, '.', '-', '_')",
        ),
        ("host-ip-text", "hosts[0].public_ip 'not-an-ip' is not an IP address"),
        ("host-private-ip", "hosts[0].private_ip '10.0.1' is not an IP address"),
        ("host-dns-number", "hosts[0].public_dns must be a string, got a number"),
        ("host-duplicate", "hosts[1].name 'mlflow-dev-1' is used twice"),
        ("ssh-user-empty", "output 'ssh_user' must be a non-empty string, got an empty string"),
        ("url-list", "output 'url' must be a non-empty string, got a list"),
        ("key-number", "output 'ssh_private_key' must be a string, got a number"),
        ("s3-bool", "output 's3_endpoint_url' must be a string, got a boolean"),
    ],
)
def test_malformed_outputs(outputs: dict[str, Any], change: str, expected: str) -> None:
    message = error_for(bad(change, outputs))
    assert message == f"outputs file /x/outputs.json: {expected}; fix the file"
    assert DB_PASSWORD not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not valid JSON (Expecting value at line 1 column 1)"),
        ('{"db_dsn": "postgresql://u:dbS3cretPassw0rd@h/db", ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object of stack outputs, got a list"),
        ("null", "expected a JSON object of stack outputs, got null"),
    ],
)
def test_unparsable_text(text: str, expected: str) -> None:
    with pytest.raises(ps.StackOutputsError) as info:
        ps.parse_outputs(text, SOURCE)
    assert expected in str(info.value)
    assert DB_PASSWORD not in str(info.value)


@pytest.mark.parametrize("stack", ["", "../etc", ".hidden", "org/project/dev", "a b", None])
def test_stack_names_that_would_escape_the_credentials_folder(stack: Any) -> None:
    with pytest.raises(ps.StackOutputsError, match="invalid stack name"):
        ps.check_stack_name(stack)


@pytest.mark.parametrize("stack", ["dev", "prod-eu", "team_a.v2", "Dev2"])
def test_valid_stack_names(stack: str) -> None:
    assert ps.check_stack_name(stack) == stack


def test_unknown_stack_message() -> None:
    error = ps.pulumi_failure("qa", Path("/repo"), 255, "error: no stack named 'qa' found\n")
    assert str(error) == (
        "Pulumi stack 'qa' does not exist in /repo: list the stacks with `pulumi stack ls` "
        "and set STACK to one of them, or create it with `make infra STACK=qa`"
    )


def test_other_pulumi_failures_show_stderr_on_one_line_without_url_passwords() -> None:
    stderr = (
        "warning: noise\n\n"
        "error: failed to load checkpoint from postgres://admin:hunter22@state-db/pulumi\n"
        "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE\n"
    )
    message = str(ps.pulumi_failure("dev", Path("/repo"), 255, stderr))
    assert message == (
        "`pulumi stack output --stack dev` failed in /repo (exit 255): warning: noise | "
        "error: failed to load checkpoint from postgres://admin:***@state-db/pulumi | "
        "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE"
    )


def test_stderr_summary_keeps_the_last_lines_only() -> None:
    stderr = "\n".join(f"line {n}" for n in range(20))
    assert ps.summarize_stderr(stderr) == "line 15 | line 16 | line 17 | line 18 | line 19"
    assert ps.summarize_stderr("") == "no error output"


def test_pulumi_command_puts_no_secret_on_the_command_line() -> None:
    assert ps.pulumi_command("/usr/bin/pulumi", "dev") == [
        "/usr/bin/pulumi",
        "stack",
        "output",
        "--json",
        "--show-secrets",
        "--non-interactive",
        "--color",
        "never",
        "--stack",
        "dev",
    ]


# ---------------------------------------------------------------- key file and folders


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """umask 022: the code, not the umask, must make the files private."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("usual_umask")
def test_key_written_0600_in_0700_folders_with_a_trailing_newline(tmp_path: Path) -> None:
    stack_dir = ps.prepare_stack_dir(tmp_path / "a" / "creds", "dev")
    key_file = ps.install_private_key(stack_dir, "-----BEGIN KEY-----\nabc\n-----END KEY-----")
    assert key_file == stack_dir / "ssh_key"
    assert key_file.read_bytes() == b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    assert mode(key_file) == 0o600
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "creds", stack_dir)] == [0o700] * 3
    assert sorted(p.name for p in stack_dir.iterdir()) == ["ssh_key"]  # no temp file left


def test_key_with_a_newline_is_written_as_is(tmp_path: Path) -> None:
    path = tmp_path / "ssh_key"
    assert ps.write_private_key(path, "KEY\n") is True
    assert path.read_bytes() == b"KEY\n"


def test_unchanged_key_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "ssh_key"
    ps.write_private_key(path, "KEY")
    os.utime(path, ns=(10**9, 10**9))
    before = path.stat()
    path.chmod(0o644)
    assert ps.write_private_key(path, "KEY") is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, 10**9)
    assert mode(path) == 0o600  # a loosened mode is tightened again


def test_changed_key_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ssh_key"
    ps.write_private_key(path, "OLD")
    assert ps.write_private_key(path, "NEW") is True
    assert path.read_bytes() == b"NEW\n"
    assert mode(path) == 0o600


def test_existing_credentials_folder_keeps_its_mode_but_stack_folder_is_made_private(
    tmp_path: Path,
) -> None:
    creds = tmp_path / "creds"
    (creds / "dev").mkdir(parents=True, mode=0o755)
    creds.chmod(0o750)
    (creds / "dev").chmod(0o755)
    ps.prepare_stack_dir(creds, "dev")
    assert (mode(creds), mode(creds / "dev")) == (0o750, 0o700)


def test_no_key_no_file(tmp_path: Path) -> None:
    assert ps.install_private_key(tmp_path, None) is None
    assert ps.install_private_key(tmp_path, "") is None
    assert list(tmp_path.iterdir()) == []


def test_unwritable_credentials_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "creds"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ps.StackOutputsError, match="cannot create the credentials folder"):
        ps.prepare_stack_dir(blocker, "dev")


# ---------------------------------------------------------------- host variables


def test_host_vars(
    outputs: dict[str, Any], tmp_path: Path, expected_host_vars: Callable[[Path, Path], dict]
) -> None:
    result = ps.validate_outputs(outputs, SOURCE)
    key = tmp_path / "dev" / "ssh_key"
    host_vars = ps.build_host_vars(result, result.hosts[0], "dev", tmp_path / "dev", key)
    assert host_vars == expected_host_vars(tmp_path / "dev", key)


def test_host_vars_without_key_and_with_s3_settings(outputs: dict[str, Any]) -> None:
    outputs.update(s3_endpoint_url="http://10.77.0.1:55900", s3_secret_access_key="sk")
    result = ps.validate_outputs(outputs, SOURCE)
    stack_dir = Path("/home/op/my creds/dev")
    host_vars = ps.build_host_vars(result, result.hosts[0], "dev", stack_dir, None)
    assert "ansible_ssh_private_key_file" not in host_vars
    # Quoted: Ansible splits these arguments like a shell would.
    assert host_vars["ansible_ssh_common_args"] == (
        "-o UserKnownHostsFile='/home/op/my creds/dev/known_hosts'"
    )
    assert host_vars["mlflow_s3_endpoint_url"] == "http://10.77.0.1:55900"
    assert host_vars["mlflow_s3_secret_access_key"] == "sk"
    assert "mlflow_s3_access_key_id" not in host_vars


def test_outputs_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ps.StackOutputsError) as info:
        ps.read_outputs_file(tmp_path / "missing.json")
    assert str(info.value).startswith(f"outputs file {tmp_path}/missing.json does not exist: ")
    assert "MLFLOW_AWS_OUTPUTS_FILE" in str(info.value)
    with pytest.raises(ps.StackOutputsError, match=r"cannot read outputs file .*: Is a directory"):
        ps.read_outputs_file(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ps.StackOutputsError, match="not UTF-8 text"):
        ps.read_outputs_file(tmp_path / "latin1.json")


def test_outputs_round_trip_through_json(outputs: dict[str, Any]) -> None:
    assert ps.parse_outputs(json.dumps(outputs), SOURCE) == ps.validate_outputs(outputs, SOURCE)


def test_drain_seconds_passes_through_when_a_load_balancer_is_in_front(
    outputs: dict[str, Any],
) -> None:
    outputs["drain_seconds"] = 25
    assert ps.validate_outputs(outputs, SOURCE).drain_seconds == 25


@pytest.mark.parametrize("bad", [-1, 601, "25", 2.5, True, None])
def test_drain_seconds_must_be_a_small_whole_number(outputs: dict[str, Any], bad: object) -> None:
    outputs["drain_seconds"] = bad
    assert "output 'drain_seconds' must be an integer from 0 to 600" in error_for(outputs)


# ---------------------------------------------------------------- output `tls`


def test_tls_output_becomes_the_roles_tls_variables(
    outputs: dict[str, Any], tmp_path: Path
) -> None:
    outputs["tls"] = {
        "mode": "acme",
        "domain": "mlflow.example.com",
        "acme_directory_url": "https://acme.example/dir",
        "acme_email": "ops@example.com",
        "acme_profile": "shortlived",
    }
    result = ps.validate_outputs(outputs, SOURCE)
    host_vars = ps.build_host_vars(result, result.hosts[0], "dev", tmp_path, None)
    assert {
        k: v
        for k, v in host_vars.items()
        if k.startswith(("mlflow_tls", "mlflow_acme", "mlflow_domain"))
    } == {
        "mlflow_tls_mode": "acme",
        "mlflow_domain": "mlflow.example.com",
        "mlflow_acme_directory_url": "https://acme.example/dir",
        "mlflow_acme_email": "ops@example.com",
        "mlflow_acme_profile": "shortlived",
    }


def test_without_tls_output_the_roles_defaults_apply(
    outputs: dict[str, Any], tmp_path: Path
) -> None:
    result = ps.validate_outputs(outputs, SOURCE)
    host_vars = ps.build_host_vars(result, result.hosts[0], "dev", tmp_path, None)
    assert not [
        k for k in host_vars if k.startswith(("mlflow_tls", "mlflow_acme", "mlflow_domain"))
    ]


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("acme", "output 'tls' must be an object, got a string"),
        ({"mode": 1}, "output 'tls.mode' must be a string, got a number"),
        ({"mod": "acme"}, "output 'tls' has unknown key(s) mod; known: mode, domain"),
    ],
)
def test_bad_tls_output_is_named(outputs: dict[str, Any], tls: object, message: str) -> None:
    outputs["tls"] = tls
    assert message in error_for(outputs)
