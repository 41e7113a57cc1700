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
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

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


class FilterModule:
    """mlflow-aws derived values."""

    def filters(self) -> dict[str, Any]:
        return {
            "mlflow_workers": mlflow_workers,
            "mlflow_allowed_hosts": mlflow_allowed_hosts,
            "mlflow_cors_origins": mlflow_cors_origins,
            "mlflow_dsn_without_password": mlflow_dsn_without_password,
            "mlflow_dsn_password": mlflow_dsn_password,
            "systemd_env_quote": systemd_env_quote,
            "nginx_credential_digest": nginx_credential_digest,
        }
