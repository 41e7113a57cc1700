"""Checks before `pulumi up/preview/destroy/stack output`, each failure ONE line with the fix.

    python -m infra.preflight --stack dev                      # make infra / make preview
    python -m infra.preflight --stack dev --existing           # make destroy
    python -m infra.preflight --stack dev --existing --cli-only   # make outputs

In order: the Pulumi CLI is on PATH; it is logged in to a backend; AWS credentials are
configured (skipped with --cli-only); a self-managed backend has its secrets passphrase.
With --existing the stack must exist already. Otherwise the stack's config file is created
from Pulumi.example.yaml when missing, its settings are validated with the program's own
validator (infra.settings), and only when everything passed is the stack created
(`pulumi stack init`). A failed check changes nothing outside the stack's local config file.
Exit status 0 when ready, 1 with `error: ...` on stderr otherwise.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.settings import PROJECT, REQUIRED, SettingsError, StackSettings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = "Pulumi.example.yaml"
PULUMI_TIMEOUT = 120  # seconds; `whoami` and `stack ls` talk to the backend

Runner = Callable[..., subprocess.CompletedProcess[str]]


class PreflightError(Exception):
    """What is missing and how to fix it, in one line."""


@dataclass
class Preflight:
    """One run of the checks; the environment is injected so tests can fake it."""

    stack: str
    root: Path = ROOT
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    home: Path = field(default_factory=Path.home)
    run: Runner = subprocess.run
    which: Callable[..., str | None] = shutil.which
    notes: list[str] = field(default_factory=list)  # informational lines (a created stack)

    @property
    def stack_file(self) -> Path:
        return self.root / f"Pulumi.{self.stack}.yaml"

    def check(self, *, existing: bool, cli_only: bool) -> None:
        pulumi = self.pulumi_cli()
        backend_url = self.logged_in_backend(pulumi)
        if not cli_only:
            self.aws_credentials()
        self.secrets_passphrase(backend_url)
        exists = self.stack_exists(pulumi)
        if existing:
            if not exists:
                raise PreflightError(
                    f"stack {self.stack!r} does not exist in this backend: nothing to act on "
                    f"(`pulumi stack ls` lists the stacks; choose one with STACK=<name>)"
                )
            return
        self.validate_settings(created=self.create_config_file())
        if not exists:
            self.pulumi(pulumi, "stack", "init", self.stack)
            self.notes.append(f"created Pulumi stack {self.stack!r}")

    # --- the CLI and its backend --------------------------------------------------------

    def pulumi_cli(self) -> str:
        path = self.which("pulumi", path=self.env.get("PATH"))
        if not path:
            raise PreflightError(
                "the Pulumi CLI is not on PATH: install it (https://www.pulumi.com/docs/install/, "
                "e.g. `curl -fsSL https://get.pulumi.com | sh`) and open a new shell"
            )
        return path

    def pulumi(self, cli: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            [cli, *args, "--non-interactive"],
            cwd=self.root,
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT,
            check=False,
        )

    def logged_in_backend(self, cli: str) -> str:
        """The backend URL the CLI is logged in to."""
        result = self.pulumi(cli, "whoami", "--json")
        if result.returncode != 0:
            raise PreflightError(
                "the Pulumi CLI is not logged in to a backend: run `pulumi login` (Pulumi Cloud) "
                "or `pulumi login --local` (state files in ~/.pulumi)"
            )
        try:
            return str(json.loads(result.stdout).get("url", ""))
        except (json.JSONDecodeError, AttributeError):
            return ""

    def stack_exists(self, cli: str) -> bool:
        result = self.pulumi(cli, "stack", "ls", "--json")
        if result.returncode != 0:
            raise PreflightError(
                f"`pulumi stack ls` failed ({_first_line(result.stderr)}): check the backend "
                f"with `pulumi whoami -v`"
            )
        names = [str(s.get("name", "")) for s in json.loads(result.stdout or "[]")]
        return any(n == self.stack or n.endswith(f"/{self.stack}") for n in names)

    def secrets_passphrase(self, backend_url: str) -> None:
        """Self-managed backends encrypt the stack's secrets (DB DSN, SSH key) with a passphrase."""
        self_managed = backend_url.startswith(("file://", "s3://", "gs://", "azblob://"))
        provider = str(self._stack_document().get("secretsprovider", "passphrase"))
        has_passphrase = {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"} & set(
            self.env
        )
        if self_managed and provider.startswith("passphrase") and not has_passphrase:
            raise PreflightError(
                f"the {backend_url} backend encrypts this stack's secrets with a passphrase: "
                f"export PULUMI_CONFIG_PASSPHRASE_FILE=<file holding it> (or "
                f"PULUMI_CONFIG_PASSPHRASE), the same for every run"
            )

    # --- AWS credentials ------------------------------------------------------------------

    def aws_credentials(self) -> None:
        """Credentials the AWS provider will find: env keys, web identity, container, profile."""
        env = self.env
        if env.get("MLFLOW_AWS_SKIP_CREDENTIALS_CHECK") == "1":
            return  # e.g. an EC2 instance role, which only the metadata service can confirm
        key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            return
        if key_id or secret:
            missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
            raise PreflightError(f"{missing} is not set while its pair is: export both, or neither")
        if (
            env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
            or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        ):
            return
        configured = self._stack_config().get("aws:profile")
        profile = configured or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
        if self._aws_profile_exists(profile or "default"):
            return
        if profile:
            source = "aws:profile in the stack config" if configured else "AWS_PROFILE"
            raise PreflightError(
                f"AWS profile {profile!r} (from {source}) is not in ~/.aws/config or "
                f"~/.aws/credentials: run `aws configure --profile {profile}` or "
                f"`aws configure sso --profile {profile}`"
            )
        raise PreflightError(
            "no AWS credentials found: run `aws configure` (or `aws configure sso` and export "
            "AWS_PROFILE=<profile>), or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )

    def _aws_profile_exists(self, profile: str) -> bool:
        credentials = Path(
            self.env.get("AWS_SHARED_CREDENTIALS_FILE", self.home / ".aws" / "credentials")
        )
        config = Path(self.env.get("AWS_CONFIG_FILE", self.home / ".aws" / "config"))
        config_section = "default" if profile == "default" else f"profile {profile}"
        return profile in _ini_sections(credentials) or config_section in _ini_sections(config)

    # --- the stack's settings ---------------------------------------------------------------

    def create_config_file(self) -> bool:
        """Copy the example config when the stack has none yet; True if it was created."""
        if self.stack_file.exists():
            return False
        shutil.copyfile(self.root / EXAMPLE_CONFIG, self.stack_file)
        return True

    def validate_settings(self, *, created: bool) -> None:
        document = self._stack_document()
        config = self._stack_config()
        if "environment" in document or any(isinstance(v, dict) for v in config.values()):
            return  # values from Pulumi ESC or secrets: the program validates them at `up`
        values = _settings_mapping(config)
        missing = [key for key in REQUIRED if values.get(key) in (None, "", [])]
        name = self.stack_file.name
        if missing:
            start = f"created {name} from {EXAMPLE_CONFIG}; set" if created else f"{name}: set"
            raise PreflightError(
                f"{start} the required {' and '.join(missing)} in it (see the comments there), "
                f"e.g. `pulumi config set --stack {self.stack} aws:region eu-west-1` and "
                f"`pulumi config set --stack {self.stack} --path 'sshAllowedCidrs[0]' "
                f"<your public IP>/32`"
            )
        try:
            StackSettings.from_mapping(values)
        except SettingsError as err:
            raise PreflightError(f"{name}: {err}") from None

    def _stack_document(self) -> dict[str, Any]:
        if not self.stack_file.exists():
            return {}
        try:
            document = yaml.safe_load(self.stack_file.read_text()) or {}
        except yaml.YAMLError as err:
            raise PreflightError(f"{self.stack_file.name} is not valid YAML: {err}") from None
        if not isinstance(document, dict):
            raise PreflightError(f"{self.stack_file.name} must be a YAML mapping with `config:`")
        return document

    def _stack_config(self) -> dict[str, Any]:
        return self._stack_document().get("config") or {}


def _settings_mapping(config: Mapping[str, Any]) -> dict[str, Any]:
    """Stack config keys (`mlflow-aws:x`, `aws:region`) as infra.settings names them."""
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith(f"{PROJECT}:"):
            values[key.split(":", 1)[1]] = value
        elif key == "aws:region":
            values[key] = value
    return values


def _ini_sections(path: Path) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error:
        return []
    return parser.sections()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="stack name, e.g. dev")
    parser.add_argument("--existing", action="store_true", help="the stack must exist already")
    parser.add_argument("--cli-only", action="store_true", help="skip the AWS credentials check")
    args = parser.parse_args(argv)
    preflight = Preflight(stack=args.stack)
    try:
        preflight.check(existing=args.existing, cli_only=args.cli_only)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"error: could not run the checks: {err}", file=sys.stderr)
        return 1
    for note in preflight.notes:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
