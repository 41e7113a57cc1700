"""Filters that derive MLflow server settings from the host's facts and the stack's outputs.

They live in Python rather than in Jinja so the arithmetic and the parsing are unit-tested
(tests/unit/ansible/test_mlflow_filters.py) and fail with one clear message.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

import yaml
from ansible.errors import AnsibleFilterError

# Measured on MLflow 3.17.2 with job execution off (bench/RESULTS.md), peak RSS under load:
# 288 MiB (302 MB) for the parent and uvicorn supervisor + 394 MiB (413 MB) per worker.
BASE_MB = 302
PER_WORKER_MB = 413
# Share of RAM left for the OS, nginx, page cache and growth of long-lived workers.
RESERVE_RATIO = 0.30

# Host headers MLflow must keep accepting once --allowed-hosts replaces its defaults:
# health checks and SSH tunnels reach the server on the loopback address.
LOCAL_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*")

DSN_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres")

# What a user of mlflow_users may do (its `role`): write (the default) uses MLflow, read only
# reads it, metrics reads /metrics and /metrics/nginx and nothing else. The one list is the
# nginx_basic_auth role's argument spec (which enforces the roles); read here, not repeated.
USER_ROLES_SPEC = (
    Path(__file__).resolve().parent.parent / "roles/nginx_basic_auth/meta/argument_specs.yml"
)


def _user_role_spec() -> dict[str, Any]:
    spec = yaml.safe_load(USER_ROLES_SPEC.read_text(encoding="utf-8"))
    role: dict[str, Any] = spec["argument_specs"]["main"]["options"]["nginx_basic_auth_users"][
        "options"
    ]["role"]
    return role


USER_ROLES: tuple[str, ...] = tuple(_user_role_spec()["choices"])
DEFAULT_USER_ROLE: str = _user_role_spec()["default"]


def mlflow_workers(
    memtotal_mb: Any,
    vcpus: Any,
    base_mb: int = BASE_MB,
    per_worker_mb: int = PER_WORKER_MB,
    reserve_ratio: float = RESERVE_RATIO,
) -> int:
    """Number of uvicorn workers that fit in RAM: at least 1, at most one per vCPU."""
    memory = _positive_int(memtotal_mb, "memtotal_mb")
    cpus = _positive_int(vcpus, "vcpus")
    if not 0 <= float(reserve_ratio) < 1:
        raise AnsibleFilterError(
            f"mlflow_workers: reserve_ratio must be in [0, 1), got {reserve_ratio}"
        )
    usable_mb = memory * (1 - float(reserve_ratio)) - int(base_mb)
    fitting = math.floor(usable_mb / int(per_worker_mb))
    return max(1, min(cpus, fitting))


def mlflow_allowed_hosts(names: Any) -> list[str]:
    """Host header patterns for --allowed-hosts: the public names plus loopback forms."""
    hosts = [_host_header(name) for name in _names(names, "mlflow_allowed_hosts")]
    return _unique([*hosts, *LOCAL_HOSTS])


def mlflow_cors_origins(names: Any) -> list[str]:
    """Origins for --cors-allowed-origins: the HTTPS origin of every public name."""
    names = _names(names, "mlflow_cors_origins")
    return _unique([f"https://{_host_header(name)}" for name in names])


def mlflow_dsn_without_password(dsn: Any, driver: str = "psycopg2") -> str:
    """The PostgreSQL DSN as a SQLAlchemy URL without its password (libpq reads PGPASSWORD).

    The driver is spelled out: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, while the
    virtualenv has psycopg2.
    """
    parts = _split_dsn(dsn)
    scheme = parts.scheme if "+" in parts.scheme else f"postgresql+{driver}"
    netloc = f"{quote(unquote(parts.username or ''), safe='')}@{_hostport(parts)}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def mlflow_dsn_password(dsn: Any) -> str:
    """The DSN's password, percent-decoded, as libpq expects it in PGPASSWORD."""
    return unquote(_split_dsn(dsn).password or "")


def mlflow_dsn_with_login(dsn: Any, login: Any) -> str:
    """The DSN with another user and password ({'user', 'password'}; `make rotate-db`'s login
    role); the DSN unchanged when login is empty (the stack's master user)."""
    parts = _split_dsn(dsn)
    if not login:
        return str(dsn)
    if not isinstance(login, dict) or not login.get("user") or not login.get("password"):
        raise AnsibleFilterError("mlflow_dsn_with_login: the login needs a user and a password")
    user, password = (quote(str(login[key]), safe="") for key in ("user", "password"))
    netloc = f"{user}:{password}@{_hostport(parts)}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def systemd_env_quote(value: Any) -> str:
    """Quote a value for a systemd EnvironmentFile (double quotes, backslash escapes)."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise AnsibleFilterError(
            "systemd_env_quote: values in an environment file cannot contain newlines"
        )
    for char in ("\\", '"', "$", "`"):
        text = text.replace(char, "\\" + char)
    return f'"{text}"'


def nginx_credential_digest(name: Any, password: Any) -> str:
    """What nginx's secure_link compares with md5($http_authorization): the MD5 of the header a
    client sends for these credentials, base64url without padding.

    The nginx_basic_auth role exempts requests carrying valid credentials from the limit on
    password guessing this way (nginx cannot check a password before limit_req runs).
    """
    if not isinstance(name, str) or not isinstance(password, str) or not name or ":" in name:
        raise AnsibleFilterError(
            "nginx_credential_digest: needs a user name (no ':') and a password"
        )
    token = base64.b64encode(f"{name}:{password}".encode()).decode("ascii")
    digest = hashlib.md5(f"Basic {token}".encode("ascii")).digest()  # noqa: S324 - nginx's choice
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def mlflow_users_by_role(users: Any) -> dict[str, list[dict[str, Any]]]:
    """The users grouped by role (without the role key), every role present; users without
    a role have the default one.

    The one place that reads a user's role: nginx's password files and maps come from it.
    """
    if not isinstance(users, list):
        raise AnsibleFilterError("mlflow_users_by_role: needs a list of users")
    grouped: dict[str, list[dict[str, Any]]] = {role: [] for role in USER_ROLES}
    for user in users:
        if not isinstance(user, dict) or not isinstance(user.get("name"), str):
            raise AnsibleFilterError("mlflow_users_by_role: every user needs a name")
        role = user.get("role") or DEFAULT_USER_ROLE
        if role not in USER_ROLES:
            raise AnsibleFilterError(
                f"user {user['name']}: role {role!r} is not one of {', '.join(USER_ROLES)}"
            )
        grouped[role].append({k: v for k, v in user.items() if k != "role"})
    return grouped


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(
            f"mlflow_workers: {name} must be an integer, got {value!r}"
        ) from None
    if number < 1:
        raise AnsibleFilterError(f"mlflow_workers: {name} must be at least 1, got {number}")
    return number


def _names(names: Any, filter_name: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        names = [names]
    cleaned = [str(name).strip().lower() for name in names if name is not None]
    cleaned = [name for name in cleaned if name]
    if not cleaned:
        raise AnsibleFilterError(f"{filter_name}: needs at least one DNS name or IP address")
    return cleaned


def _host_header(name: str) -> str:
    """How a name appears in a Host header or an origin (IPv6 literals in brackets)."""
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name
    return f"[{address}]" if address.version == 6 else str(address)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _split_dsn(dsn: Any) -> SplitResult:
    # Error messages never include the DSN: it carries the database password.
    if not isinstance(dsn, str) or not dsn:
        raise AnsibleFilterError("mlflow_db_dsn must be a non-empty string")
    parts = urlsplit(dsn)
    if parts.scheme not in DSN_SCHEMES:
        raise AnsibleFilterError(
            f"mlflow_db_dsn must start with one of {', '.join(s + '://' for s in DSN_SCHEMES)}"
        )
    if not parts.hostname or not parts.username or len(parts.path) < 2:
        raise AnsibleFilterError(
            "mlflow_db_dsn must look like postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise AnsibleFilterError("mlflow_db_dsn has an invalid port") from None
    return parts


def _hostport(parts: SplitResult) -> str:
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port}" if parts.port else str(host)


# certbot's lines that never say what went wrong.
_CERTBOT_BOILERPLATE = (
    "Saving debug log",
    "Ask for help",
    "See the logfile",
    "Hint:",
    "Some challenges have failed",
    "An unexpected error occurred",
    "Requesting a certificate",
    "Account registered",
    "Certbot failed to authenticate",  # the Identifier/Type/Detail lines that follow say why
)
CERTBOT_REASON_CHARS = 300


def certbot_failure(result: Any, timeout: Any = None) -> str:
    """One line: why a `certbot certonly` run (an Ansible command result) got no certificate."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("certbot_failure: expects the registered result of the command")
    if result.get("rc") == 124:  # timeout(1)
        return f"the ACME server gave no certificate within {timeout} s"
    text = f"{result.get('stderr', '')}\n{result.get('stdout', '')}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_CERTBOT_BOILERPLATE)]
    reason = "; ".join(useful) or result.get("msg") or f"certbot exited {result.get('rc')}"
    if len(reason) > CERTBOT_REASON_CHARS:
        reason = reason[: CERTBOT_REASON_CHARS - 3] + "..."
    return reason


class FilterModule:
    """mlflow-aws derived values."""

    def filters(self) -> dict[str, Any]:
        return {
            "mlflow_workers": mlflow_workers,
            "mlflow_allowed_hosts": mlflow_allowed_hosts,
            "mlflow_cors_origins": mlflow_cors_origins,
            "mlflow_dsn_without_password": mlflow_dsn_without_password,
            "mlflow_dsn_password": mlflow_dsn_password,
            "mlflow_dsn_with_login": mlflow_dsn_with_login,
            "systemd_env_quote": systemd_env_quote,
            "nginx_credential_digest": nginx_credential_digest,
            "mlflow_users_by_role": mlflow_users_by_role,
            "certbot_failure": certbot_failure,
        }
