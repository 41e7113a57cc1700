"""Print the shell lines a client needs to use a stack's MLflow server (make credentials).

    python -m inventory_plugin.credentials [--stack S] [--user NAME] [--outputs-file F]
    eval "$(make credentials)"

The outputs come from the same loader as the inventory plugin (pulumi, or the outputs file);
the password from <credentials_dir>/<stack>/users/<user>.password, written by `make configure`.

    python -m inventory_plugin.credentials --forget (--user NAME | --all-users) [--stack S]

deletes those password files so the next playbook run generates new ones (make rotate).
Exit code 2, with one line on stderr, on any error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from inventory_plugin.pulumi_stack import (
    DEFAULT_CREDENTIALS_DIR,
    NAME_PATTERN,
    OUTPUTS_FILE_ENV,
    REPO_ROOT,
    StackOutputs,
    StackOutputsError,
    check_stack_name,
    load_outputs,
    resolve_path,
)

GROUP_VARS_FILE = REPO_ROOT / "ansible" / "group_vars" / "all.yml"
CREDENTIALS_DIR_ENV = "MLFLOW_AWS_CREDENTIALS_DIR"
LOAD_BALANCER_CERT = "load-balancer.crt"
ERROR_EXIT_CODE = 2


class CredentialsError(Exception):
    """A one-line message naming the problem and its fix."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inventory_plugin.credentials",
        description="Print the export lines a client needs for a stack's MLflow server.",
    )
    parser.add_argument("--stack", default=os.environ.get("STACK") or "dev")
    parser.add_argument("--user", help="default: the first of mlflow_users in group_vars/all.yml")
    parser.add_argument("--outputs-file", default=os.environ.get(OUTPUTS_FILE_ENV) or None)
    parser.add_argument(
        "--forget",
        action="store_true",
        help="delete the password file(s) so the next playbook run makes new ones",
    )
    parser.add_argument("--all-users", action="store_true", help="with --forget: every user")
    args = parser.parse_args(argv)
    if args.forget and bool(args.user) == args.all_users:
        parser.error("--forget needs either --user NAME or --all-users")
    if args.all_users and not args.forget:
        parser.error("--all-users only goes with --forget")
    return args


def default_user(group_vars_file: Path) -> str:
    """The first user of `mlflow_users` in the group vars file."""
    try:
        group_vars = yaml.safe_load(group_vars_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CredentialsError(
            f"cannot read the users from {group_vars_file} ({exc.__class__.__name__}): "
            "pass --user NAME (make credentials USER=name)"
        ) from None
    users = group_vars.get("mlflow_users") if isinstance(group_vars, dict) else None
    first = users[0] if isinstance(users, list) and users else None
    name = first.get("name") if isinstance(first, dict) else None
    if not isinstance(name, str) or not name:
        raise CredentialsError(
            f"no user in mlflow_users of {group_vars_file}: declare one there "
            "(mlflow_users: [{name: team}]) or pass --user NAME (make credentials USER=name)"
        )
    return name


def password_path(stack_dir: Path, user: str) -> Path:
    if not NAME_PATTERN.fullmatch(user):
        raise CredentialsError(f"invalid user name {user!r}: use letters, digits, '.', '-', '_'")
    return stack_dir / "users" / f"{user}.password"


def read_password(stack_dir: Path, user: str) -> str:
    path = password_path(stack_dir, user)
    try:
        # Only the line end: spaces may belong to a password the operator chose.
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise CredentialsError(
            f"no password for user '{user}' of stack '{stack_dir.name}' ({path} is missing): "
            "run `make configure` first, and check that the user is in mlflow_users"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    if not password:
        raise CredentialsError(f"{path} is empty: run `make rotate USER={user}` to set a new one")
    return password


def export_lines(outputs: StackOutputs, stack_dir: Path, user: str, password: str) -> list[str]:
    lines = [
        f"export MLFLOW_TRACKING_URI={shlex.quote(outputs.url)}",
        f"export MLFLOW_TRACKING_USERNAME={shlex.quote(user)}",
        f"export MLFLOW_TRACKING_PASSWORD={shlex.quote(password)}",
    ]
    cert = client_certificate(outputs, stack_dir)
    if cert is not None:
        lines.append(f"export MLFLOW_TRACKING_SERVER_CERT_PATH={shlex.quote(str(cert))}")
    else:
        # A CA-signed certificate needs no path; drop one left over from another stack.
        lines.append("unset MLFLOW_TRACKING_SERVER_CERT_PATH")
    return lines


def client_certificate(outputs: StackOutputs, stack_dir: Path) -> Path | None:
    """The self-signed certificate the URL presents, or None (a CA-signed one)."""
    if outputs.ca_certificate is not None:  # the load balancer's, from the stack outputs
        path = stack_dir / LOAD_BALANCER_CERT
        stack_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != outputs.ca_certificate:
            path.write_text(outputs.ca_certificate)
            path.chmod(0o600)
        return path
    url_host = urlsplit(outputs.url).hostname
    for host in outputs.hosts:
        if url_host in (host.public_dns, host.public_ip):
            cert = stack_dir / f"{host.name}.crt"  # fetched back by the playbook
            return cert if cert.is_file() else None
    return None  # a load balancer with the operator's CA-signed certificate


def credentials_dir() -> Path:
    value = os.environ.get(CREDENTIALS_DIR_ENV)
    return resolve_path(value, Path.cwd()) if value else DEFAULT_CREDENTIALS_DIR


def client_exports(args: argparse.Namespace) -> list[str]:
    stack = check_stack_name(args.stack)
    outputs_file = resolve_path(args.outputs_file, Path.cwd()) if args.outputs_file else None
    outputs = load_outputs(stack, REPO_ROOT, outputs_file)
    stack_dir = credentials_dir() / stack
    user = args.user or default_user(GROUP_VARS_FILE)
    return export_lines(outputs, stack_dir, user, read_password(stack_dir, user))


def forget_passwords(stack_dir: Path, user: str | None) -> list[str]:
    """Delete one user's (or every user's) password file; return the users forgotten."""
    if user:
        files = [password_path(stack_dir, user)]
    else:
        files = sorted((stack_dir / "users").glob("*.password"))
    existing = [path for path in files if path.is_file()]
    if not existing:
        who = f"user '{user}'" if user else "any user"
        raise CredentialsError(
            f"no password of {who} in {stack_dir / 'users'} to rotate: "
            "run `make configure` first, and check the user name"
        )
    for path in existing:
        path.unlink()
    return [path.name.removesuffix(".password") for path in existing]


def forget_lines(args: argparse.Namespace) -> list[str]:
    stack = check_stack_name(args.stack)
    forgotten = forget_passwords(credentials_dir() / stack, args.user)
    return [
        f"forgot the password of '{user}' (stack {stack}): the playbook now sets a new one"
        for user in forgotten
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        lines = forget_lines(args) if args.forget else client_exports(args)
    except (CredentialsError, StackOutputsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR_EXIT_CODE
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
