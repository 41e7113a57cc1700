"""Bad input gets a clear error and changes nothing: one table across every input layer.

Layers: the Pulumi settings (the program under Pulumi's mocks: the message, and no resource
declared), the inventory plugin (its configuration file and the stack outputs it reads), the
role variables and the users list (the real `make configure` playbook against the configured
test stack). For each case: the message names the input and what is allowed, no secret is in
the output, and the hosts and the operator's credentials folder are exactly as before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from standin import Host
from standin.playbook import ANSIBLE_DIR, VENV_BIN, playbook_env
from standin.util import REPO_ROOT
from tests.integration.stack import STACK, USERS, Stack

pytestmark = pytest.mark.integration

# What a configured host is made of: listings with modes, sizes and link targets, checksums of
# every configuration file, and the services' start times (a restart or reload changes nothing
# else here, so the main PIDs stand for them).
SNAPSHOT = r"""
find /etc/nginx /etc/mlflow /etc/ssh/sshd_config.d /etc/systemd/system/mlflow.service \
     /opt/mlflow /var/lib/mlflow -maxdepth 2 -printf '%p %y %m %u %s %l\n' | sort
find /etc/nginx /etc/mlflow /etc/ssh/sshd_config.d /etc/systemd/system/mlflow.service \
     -type f -exec sha256sum {} + | sort
systemctl show -p MainPID -p ActiveEnterTimestamp mlflow nginx ssh
cat /run/nginx.pid
"""


def host_snapshot(host: Host) -> str:
    return host.run(SNAPSHOT).stdout


def operator_snapshot(credentials_dir: Path) -> list[str]:
    return sorted(
        f"{p.relative_to(credentials_dir)} {p.stat().st_mode:o} {p.stat().st_size}"
        for p in credentials_dir.rglob("*")
        if ".cp" not in p.parts and ".facts" not in p.parts
    )


# ----- the cases -------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: how to apply it, and the words the error must contain."""

    id: str
    layer: str  # pulumi | inventory | role | users
    expect: list[str]
    pulumi_config: dict[str, str] = field(default_factory=dict)
    extra_vars: dict[str, object] | None = None
    outputs: Callable[[dict], object] | None = None  # edits a copy of the outputs
    outputs_text: str | None = None  # raw file content instead
    inventory_config: str | None = None  # a plugin configuration file of its own
    env: dict[str, str] = field(default_factory=dict)
    password_file: str | None = None  # content of a given password file (users layer)


def drop(key: str) -> Callable[[dict], object]:
    return lambda outputs: outputs.pop(key)


def set_host_ip(value: str) -> Callable[[dict], object]:
    return lambda outputs: outputs["hosts"][0].update(public_ip=value)


def set_dsn(value: str) -> Callable[[dict], object]:
    return lambda outputs: outputs.update(db_dsn=value)


CASES = [
    # Pulumi settings: `make infra` stops before declaring anything.
    Case("pulumi-bad-cidr", "pulumi", ["sshAllowedCidrs", "'10.0.0.300/32' is not a CIDR"],
         pulumi_config={"mlflow-aws:sshAllowedCidrs": '["10.0.0.300/32"]'}),
    Case("pulumi-ssh-open-to-the-world", "pulumi", ["sshAllowedCidrs", "whole internet"],
         pulumi_config={"mlflow-aws:sshAllowedCidrs": '["0.0.0.0/0"]'}),
    Case("pulumi-instance-too-small", "pulumi", ["instanceType 't3.micro'", "at least 2 GiB"],
         pulumi_config={"mlflow-aws:instanceType": "t3.micro"}),
    Case("pulumi-unsupported-db-version", "pulumi", ["dbEngineVersion '13'", "15, 16, 17, 18"],
         pulumi_config={"mlflow-aws:dbEngineVersion": "13"}),
    Case("pulumi-prefix-of-the-backups", "pulumi", ["artifactPrefix 'backups'", "database backups"],
         pulumi_config={"mlflow-aws:artifactPrefix": "backups"}),
    Case("pulumi-instances-out-of-range", "pulumi", ["instances", "1 to 10"],
         pulumi_config={"mlflow-aws:instances": "11"}),
    Case("pulumi-typo-in-a-setting", "pulumi", ["unknown setting instanceTyp", "instanceType"],
         pulumi_config={"mlflow-aws:instanceTyp": "t3.large"}),
    Case("pulumi-unknown-tls-mode", "pulumi", ["tlsMode 'letsencrypt' is not allowed",
         "acme, self-signed, files"], pulumi_config={"mlflow-aws:tlsMode": "letsencrypt"}),
    Case("pulumi-malformed-domain", "pulumi", ["domain 'mlflow..example.com' is not allowed",
         "lowercase DNS name"], pulumi_config={"mlflow-aws:domain": "mlflow..example.com"}),
    Case("pulumi-acme-directory-not-https", "pulumi", ["acmeDirectoryUrl 'http://acme.test/dir'",
         "https:// URL"], pulumi_config={"mlflow-aws:acmeDirectoryUrl": "http://acme.test/dir"}),
    # The inventory plugin's outputs file and configuration.
    Case("outputs-malformed-json", "inventory", ["not valid JSON", "line 1 column 2"],
         outputs_text="{hosts: [}"),
    Case("outputs-missing-dsn", "inventory", ["required output(s) 'db_dsn' missing"],
         outputs=drop("db_dsn")),
    Case("outputs-bad-host-address", "inventory", ["hosts[0].public_ip 'ten.0.0.1'",
         "is not an IP address"], outputs=set_host_ip("ten.0.0.1")),
    Case("outputs-dsn-not-postgresql", "inventory", ["mlflow_db_dsn must start with one of",
         "postgresql://"], outputs=set_dsn("mysql://mlflow:pw@db:3306/mlflow")),
    Case("outputs-drain-seconds-not-a-number", "inventory", ["output 'drain_seconds' must be an "
         "integer from 0 to 600"], outputs=lambda o: o.update(drain_seconds="25")),
    Case("outputs-tls-mode-unknown", "inventory", ["nginx_basic_auth_tls_mode (stack setting "
         "tlsMode) must be acme, self-signed or files", "'letsencrypt'"],
         outputs=lambda o: o.update(tls={"mode": "letsencrypt"})),
    Case("outputs-tls-domain-malformed", "inventory", ["nginx_basic_auth_acme_domain (stack "
         "setting domain) must be a lowercase DNS name", "'mlflow..example.com'"],
         outputs=lambda o: o.update(tls={"mode": "acme", "domain": "mlflow..example.com"})),
    Case("outputs-tls-directory-not-https", "inventory", ["nginx_basic_auth_acme_directory_url "
         "(stack setting acmeDirectoryUrl) must be an https:// URL", "'http://acme.test/dir'"],
         outputs=lambda o: o.update(tls={"mode": "acme", "acme_directory_url": "http://acme.test/dir"})),
    Case("outputs-tls-unknown-key", "inventory", ["output 'tls' has unknown key(s) mod"],
         outputs=lambda o: o.update(tls={"mod": "acme"})),
    Case("outputs-file-missing", "inventory", ["does not exist", "pulumi stack output --json"],
         env={"MLFLOW_AWS_OUTPUTS_FILE": "/nonexistent/outputs.json"}),
    Case("inventory-bad-stack-name", "inventory", ["invalid stack name '../prod'"],
         env={"STACK": "../prod"}),
    Case("inventory-config-unknown-option", "inventory", ["unknown option(s) stak", "known:"],
         inventory_config="plugin: pulumi_stack\nstak: prod\n"),
    # Role variables: checked before the roles change anything.
    Case("role-mlflow-version-not-a-release", "role", ["mlflow_version must be a release number",
         "'latest'"], extra_vars={"mlflow_version": "latest"}),
    # Without a read-only user: with one, the check below stops the run before pip is asked.
    Case("role-unknown-mlflow-version", "role", ["MLflow 9.9.9 could not be installed",
         "No matching distribution found for mlflow==9.9.9", "Nothing was switched"],
         extra_vars={"mlflow_version": "9.9.9", "mlflow_users": [{"name": "team"},
                                                                 {"name": "alice"}]}),
    Case("role-read-routes-of-another-release", "role", ["mlflow_version is 3.17.1",
         "files/mlflow_routes.json) were derived from MLflow 3.17.2", "make read-routes"],
         extra_vars={"mlflow_version": "3.17.1"}),
    Case("role-port-not-a-number", "role", ["mlflow_port", "int"],
         extra_vars={"mlflow_port": "http"}),
    Case("role-unknown-hash-scheme", "role", ["nginx_basic_auth_hash_scheme", "sha512_crypt",
         "md5"], extra_vars={"nginx_basic_auth_hash_scheme": "md5"}),
    Case("role-unknown-tls-mode", "role", ["nginx_basic_auth_tls_mode", "acme, self-signed, files",
         "letsencrypt"], extra_vars={"nginx_basic_auth_tls_mode": "letsencrypt"}),
    Case("role-own-certificate-without-files-mode", "role", ["nginx_basic_auth_tls_certificate_src",
         "used only in tls mode files"], extra_vars={
             "nginx_basic_auth_tls_certificate_src": "/etc/hostname",
             "nginx_basic_auth_tls_private_key_src": "/etc/hostname"}),
    Case("role-ssh-settings-not-a-dict", "role", ["ssh_hardening_settings", "dict"],
         extra_vars={"ssh_hardening_settings": "PasswordAuthentication no"}),
    Case("role-rolling-batch-not-a-size", "role", ["mlflow_rolling_batch must be a number of hosts",
         "'one'"], extra_vars={"mlflow_rolling_batch": "one"}),
    Case("role-db-migrate-unknown", "role", ["mlflow_db_migrate", "auto, always"],
         extra_vars={"mlflow_db_migrate": "never"}),
    Case("role-backups-need-s3", "role", ["mlflow_db_backup_destination must be an s3://"],
         extra_vars={"mlflow_db_backup_destination": "/var/backups/mlflow"}),
    # The users list.
    Case("users-empty", "users", ["mlflow_users must list at least one user"],
         extra_vars={"mlflow_users": []}),
    Case("users-invalid-name", "users", ["unique names matching", "Alice Smith"],
         extra_vars={"mlflow_users": [{"name": "team"}, {"name": "Alice Smith"}]}),
    Case("users-duplicate-name", "users", ["unique names", "team, team"],
         extra_vars={"mlflow_users": [{"name": "team"}, {"name": "team"}]}),
    Case("users-password-too-short", "users", ["password files of alice", "fewer than 16"],
         password_file="short-pw\n"),
    Case("users-password-file-missing", "users", ["password_file of user alice", "is not a file"],
         extra_vars={"mlflow_users": [{"name": "alice", "password_file": "/nonexistent/pw"}]}),
    Case("users-not-a-list", "users", ["mlflow_users", "list"],
         extra_vars={"mlflow_users": "team"}),
    Case("users-unknown-role", "users", ["value of role must be one of: write, read, metrics, "
         "got: admin", "found in mlflow_users"],
         extra_vars={"mlflow_users": [{"name": "team"}, {"name": "alice", "role": "admin"}]}),
    Case("users-role-on-an-entry-not-a-mapping", "users", ["Each entry of mlflow_users must be "
         "a mapping such as {name: alice, role: read}", '"alice role=read"'],
         extra_vars={"mlflow_users": [{"name": "team"}, "alice role=read"]}),
    Case("role-prometheus-dir-outside-run", "role", ["mlflow_prometheus_dir must be a directory "
         "directly under /run", "/var/lib/mlflow/metrics"],
         extra_vars={"mlflow_prometheus_dir": "/var/lib/mlflow/metrics"}),
]  # fmt: skip


# ----- running them ----------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    output: str
    resources: int = 0  # Pulumi resources declared before the error


PULUMI_PROBE = """
import json, runpy, sys
sys.path.insert(0, "tests/unit/infra")
import pulumi
from infra_mocks import MOCKS  # sets Pulumi's mocks before the program is imported
from pulumi.runtime import config as runtime_config

results = []
for config in json.load(sys.stdin):
    runtime_config.set_all_config(config)
    MOCKS.reset()
    try:
        runpy.run_path("__main__.py", run_name="__main__")
        message = ""
    except pulumi.RunError as error:
        message = str(error)
    results.append({"message": message, "resources": len(MOCKS.resources)})
print(json.dumps(results))
"""

VALID_PULUMI_CONFIG = {
    "aws:region": "eu-west-1",
    "mlflow-aws:sshAllowedCidrs": '["198.51.100.7/32"]',
}


def run_pulumi_cases(cases: list[Case]) -> dict[str, Outcome]:
    """The real __main__.py under Pulumi's mocks (no CLI, no AWS), in a process of its own."""
    configs = [{**VALID_PULUMI_CONFIG, **case.pulumi_config} for case in cases]
    result = subprocess.run(
        [sys.executable, "-c", PULUMI_PROBE], input=json.dumps(configs), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    answers = json.loads(result.stdout.splitlines()[-1])
    return {
        case.id: Outcome(1 if a["message"] else 0, a["message"], a["resources"])
        for case, a in zip(cases, answers, strict=True)
    }


def run_playbook_case(stack: Stack, case: Case, work: Path) -> Outcome:
    work.mkdir()
    env = playbook_env(stack.bed.outputs_file, stack.credentials_dir, STACK)
    command = [str(VENV_BIN / "ansible-playbook"), "site.yml", "-e", f"@{stack.users_file}"]
    outputs = json.loads(stack.bed.outputs_file.read_text())
    if case.outputs is not None:
        case.outputs(outputs)
        (work / "outputs.json").write_text(json.dumps(outputs))
        env["MLFLOW_AWS_OUTPUTS_FILE"] = str(work / "outputs.json")
    if case.outputs_text is not None:
        (work / "outputs.json").write_text(case.outputs_text)
        env["MLFLOW_AWS_OUTPUTS_FILE"] = str(work / "outputs.json")
    if case.inventory_config is not None:
        (work / "pulumi_stack.yml").write_text(case.inventory_config)
        command += ["-i", str(work / "pulumi_stack.yml")]
    if case.password_file is not None:
        (work / "alice.password").write_text(case.password_file)
        users = [{"name": "team"}, {"name": "alice", "password_file": str(work / "alice.password")}]
        case.extra_vars = {"mlflow_users": users}
    if case.extra_vars is not None:
        (work / "vars.json").write_text(json.dumps(case.extra_vars))
        command += ["-e", f"@{work / 'vars.json'}"]
    env.update(case.env)
    result = subprocess.run(
        command, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=600
    )
    return Outcome(result.returncode, result.stdout + result.stderr)


@dataclass
class Checked:
    """A case's outcome and what changed while it ran (empty: nothing)."""

    outcome: Outcome
    changed: list[str]


def snapshot(stack: Stack) -> dict[str, object]:
    found: dict[str, object] = {host.name: host_snapshot(host) for host in stack.bed.hosts}
    found["operator credentials"] = operator_snapshot(stack.credentials_dir)
    return found


@pytest.fixture(scope="module")
def table(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, Checked]:
    """Every selected case in turn (all, unless -k picks some), with the hosts and the
    credentials folder compared around each."""
    work = tmp_path_factory.mktemp("bad-input")
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and "case" in item.callspec.params}  # fmt: skip
    cases = [case for case in CASES if case.id in selected]
    pulumi_cases = [c for c in cases if c.layer == "pulumi"]
    pulumi = run_pulumi_cases(pulumi_cases) if pulumi_cases else {}
    checked = {}
    for case in cases:
        before = snapshot(stack)
        outcome = pulumi[case.id] if case.layer == "pulumi" else None
        outcome = outcome or run_playbook_case(stack, case, work / case.id)
        after = snapshot(stack)
        checked[case.id] = Checked(
            outcome, [name for name in before if before[name] != after[name]]
        )
    return checked


def test_the_table_covers_every_layer() -> None:
    assert len(CASES) >= 15
    assert {c.layer for c in CASES} == {"pulumi", "inventory", "role", "users"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(
    case: Case, table: dict[str, Checked], stack: Stack
) -> None:
    outcome = table[case.id].outcome
    text = " ".join(outcome.output.split())  # Ansible folds long messages over lines
    assert outcome.returncode != 0, outcome.output[-2000:]
    missing = [words for words in case.expect if words not in text]
    assert missing == [], outcome.output[-3000:]
    secrets = {user: stack.password(user) for user in USERS}
    secrets["database"] = stack.bed.postgres.password
    assert [name for name, value in secrets.items() if value in outcome.output] == []
    assert outcome.resources == 0  # Pulumi: nothing declared before the error
    assert table[case.id].changed == []


def test_after_the_bad_inputs_a_rerun_has_nothing_to_do(
    table: dict[str, Checked], stack: Stack
) -> None:
    assert stack.configure(echo=False).check().changed() == {h.name: 0 for h in stack.bed.hosts}
