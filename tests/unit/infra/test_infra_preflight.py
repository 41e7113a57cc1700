"""`make infra` preflight: each missing piece is one line saying how to fix it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from infra_mocks import ROOT

from infra import preflight
from infra.preflight import Preflight, PreflightError

VALID_CONFIG = {
    "config": {
        "aws:region": "eu-west-1",
        "mlflow-aws:sshAllowedCidrs": ["198.51.100.7/32"],
        "mlflow-aws:instanceType": "t3.medium",
    }
}
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example"}


class FakePulumi:
    """Stands in for the CLI: answers whoami / stack ls, records every command."""

    def __init__(self, *, logged_in: bool = True, url: str = "https://api.pulumi.com",
                 stacks: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.logged_in = logged_in
        self.url = url
        self.stacks = list(stacks)
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        args = [a for a in cmd[1:] if a != "--non-interactive"]
        self.commands.append(args)
        if args[:1] == ["whoami"]:
            if not self.logged_in:
                return subprocess.CompletedProcess(cmd, 255, "", "error: not logged in")
            return subprocess.CompletedProcess(
                cmd, 0, json.dumps({"user": "u", "url": self.url}), ""
            )
        if args[:2] == ["stack", "ls"]:
            listing = json.dumps([{"name": s} for s in self.stacks])
            return subprocess.CompletedProcess(cmd, 0, listing, "")
        if args[:2] == ["stack", "init"]:
            self.stacks.append(args[2])
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(f"unexpected pulumi command {args}")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with the real Pulumi.yaml and example config."""
    for name in ("Pulumi.yaml", "Pulumi.example.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def make(project: Path, fake: FakePulumi | None = None, *, env: dict | None = None,
         cli: bool = True) -> Preflight:  # fmt: skip
    return Preflight(
        stack="dev",
        root=project,
        env={"PATH": "/usr/bin", **(AWS_KEYS if env is None else env)},
        home=project / "home",
        run=fake or FakePulumi(),
        which=lambda name, path=None: "/opt/pulumi/bin/pulumi" if cli else None,
    )


def write_config(project: Path, document: dict) -> None:
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document))


def test_missing_cli(project):
    with pytest.raises(PreflightError, match="Pulumi CLI is not on PATH: install it"):
        make(project, cli=False).check(existing=False, cli_only=False)
    assert not (project / "Pulumi.dev.yaml").exists(), "nothing changed"


def test_not_logged_in(project):
    with pytest.raises(PreflightError, match=r"not logged in.*`pulumi login`"):
        make(project, FakePulumi(logged_in=False)).check(existing=False, cli_only=False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no AWS credentials found: run `aws configure`"),
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "AWS_SECRET_ACCESS_KEY is not set"),
        ({"AWS_PROFILE": "team"}, "AWS profile 'team' \\(from AWS_PROFILE\\) is not in"),
    ],
)
def test_missing_aws_credentials(project, env, message):
    fake = FakePulumi()
    with pytest.raises(PreflightError, match=message):
        make(project, fake, env=env).check(existing=False, cli_only=False)
    assert ["stack", "init", "dev"] not in fake.commands
    assert not (project / "Pulumi.dev.yaml").exists()


def test_aws_profile_from_credentials_file(project):
    (project / "home" / ".aws").mkdir(parents=True)
    (project / "home" / ".aws" / "credentials").write_text("[team]\naws_access_key_id = x\n")
    (project / "home" / ".aws" / "config").write_text("[profile sso]\nsso_session = corp\n")
    write_config(project, VALID_CONFIG)
    for profile in ("team", "sso"):
        make(project, FakePulumi(stacks=("dev",)), env={"AWS_PROFILE": profile}).check(
            existing=False, cli_only=False
        )


def test_cli_only_needs_no_aws_credentials(project):
    make(project, FakePulumi(stacks=("dev",)), env={}).check(existing=True, cli_only=True)


def test_first_run_creates_config_from_example_and_names_required_settings(project):
    fake = FakePulumi()
    with pytest.raises(PreflightError) as err:
        make(project, fake).check(existing=False, cli_only=False)
    message = str(err.value)
    assert message.startswith("created Pulumi.dev.yaml from Pulumi.example.yaml")
    assert "aws:region and sshAllowedCidrs" in message
    assert (project / "Pulumi.dev.yaml").read_text() == (
        project / "Pulumi.example.yaml"
    ).read_text()
    assert ["stack", "init", "dev"] not in fake.commands, "no stack before the settings are valid"


def test_invalid_setting_is_reported_with_the_file_and_key(project):
    write_config(
        project, {"config": {**VALID_CONFIG["config"], "mlflow-aws:instanceType": "t3.micro"}}
    )
    fake = FakePulumi()
    with pytest.raises(PreflightError, match=r"Pulumi.dev.yaml: instanceType 't3.micro' has 1 GiB"):
        make(project, fake).check(existing=False, cli_only=False)
    assert ["stack", "init", "dev"] not in fake.commands


def test_ssh_open_to_world_is_refused_before_pulumi_up(project):
    write_config(
        project, {"config": {**VALID_CONFIG["config"], "mlflow-aws:sshAllowedCidrs": ["0.0.0.0/0"]}}
    )
    with pytest.raises(PreflightError, match=r"sshAllowedCidrs.*whole internet"):
        make(project).check(existing=False, cli_only=False)


def test_valid_config_creates_the_missing_stack(project):
    write_config(project, VALID_CONFIG)
    fake = FakePulumi()
    checks = make(project, fake)
    checks.check(existing=False, cli_only=False)
    assert ["stack", "init", "dev"] in fake.commands
    assert checks.notes == ["created Pulumi stack 'dev'"]


def test_existing_stack_is_left_alone(project):
    write_config(project, VALID_CONFIG)
    fake = FakePulumi(stacks=("acme/mlflow-aws/dev",))
    make(project, fake).check(existing=False, cli_only=False)
    assert not [c for c in fake.commands if c[:2] == ["stack", "init"]]


def test_destroy_needs_an_existing_stack(project):
    with pytest.raises(PreflightError, match="stack 'dev' does not exist"):
        make(project, FakePulumi()).check(existing=True, cli_only=False)
    assert not (project / "Pulumi.dev.yaml").exists()


def test_local_backend_needs_a_passphrase(project):
    write_config(project, VALID_CONFIG)
    fake = FakePulumi(url="file://~")
    with pytest.raises(PreflightError, match="PULUMI_CONFIG_PASSPHRASE_FILE"):
        make(project, fake).check(existing=False, cli_only=False)
    make(project, fake, env={**AWS_KEYS, "PULUMI_CONFIG_PASSPHRASE": ""}).check(
        existing=False, cli_only=False
    )


def test_main_prints_one_line_and_fails(monkeypatch, capsys):
    monkeypatch.setattr(preflight.shutil, "which", lambda *a, **k: None)
    assert preflight.main(["--stack", "dev"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: the Pulumi CLI is not on PATH")
