"""Check a configured stack from the outside, as its users reach it (make verify).

    python -m inventory_plugin.verify [--stack S] [--outputs-file F] [--users-file F]
    make verify [STACK=S]

Works against any stack (AWS or `make demo`) with what `make credentials` gives: the stack's
URL, the users' passwords and the certificate to verify. One line per check, then a summary;
exit code 1 naming the failed checks, 2 (one line on stderr) when the checks cannot start.

The round-trip check creates its own experiment and removes it afterwards: the artifact is
deleted from the artifact store, then the run and the experiment are deleted. MLflow's API
cannot purge (only `mlflow gc` on the server can), so the experiment's database row stays, in the
deleted state, under a name no user chooses (mlflow-aws-verify-<time>-<random>).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import secrets
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from inventory_plugin.credentials import (
    GROUP_VARS_FILE,
    CredentialsError,
    client_certificate,
    credentials_dir,
    read_password,
)
from inventory_plugin.pulumi_stack import (
    OUTPUTS_FILE_ENV,
    REPO_ROOT,
    StackOutputs,
    StackOutputsError,
    check_stack_name,
    load_outputs,
    resolve_path,
)

ERROR_EXIT_CODE = 2
# Another vars file holding mlflow_users, e.g. the one given to the playbook with -e @file.
USERS_FILE_ENV = "MLFLOW_AWS_USERS_FILE"
FAILED_EXIT_CODE = 1
TIMEOUT_SECONDS = 30
ARTIFACT_BYTES = 1024 * 1024
API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROBE = f"{API}/experiments/search?max_results=1"
# The MLflow client accepts nothing older; TLS 1.1 and 1.0 must be refused by the server.
MODERN_TLS = ("TLSv1.2", "TLSv1.3")


class CheckFailed(Exception):
    """What a check found wrong, in one line."""


class PinnedSession(requests.Session):
    """A session whose `verify` holds for every request, as the MLflow client passes it: a plain
    Session lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment override it."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


@dataclass
class Target:
    """The server as a client sees it: URL, certificate to verify with, users and passwords."""

    url: str
    verify: str | bool  # requests' `verify`: the pinned certificate, or the CA bundle (True)
    users: dict[str, str] = field(repr=False)
    # Each user's role in mlflow_users (write when not given): what the user may reach.
    roles: dict[str, str] = field(default_factory=dict)

    def role(self, user: str) -> str:
        return self.roles.get(user, "write")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    def session(self, user: str | None, password: str | None = None) -> requests.Session:
        session = PinnedSession()
        session.verify = self.verify
        if user is not None:
            session.auth = (user, password if password is not None else self.users[user])
        return session


# ----------------------------------------------------------------------------- the checks


def check_tls(target: Target) -> str:
    """The certificate verifies as the MLflow client verifies it; the protocol is 1.2+."""
    # The pinned certificate, or requests' own CA bundle: what the MLflow client trusts.
    cafile = target.verify if isinstance(target.verify, str) else DEFAULT_CA_BUNDLE_PATH
    context = ssl.create_default_context(cafile=cafile)
    try:
        with (
            socket.create_connection((target.host, target.port), TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            version, cipher = tls.version(), tls.cipher()
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(f"certificate does not verify: {exc.verify_message}") from None
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"TLS handshake with {target.host}:{target.port} failed: {exc}") from None
    if version not in MODERN_TLS:
        raise CheckFailed(f"negotiated {version}, want one of {', '.join(MODERN_TLS)}")
    cipher_name = cipher[0] if cipher else "?"
    return f"{version} {cipher_name}, certificate verified for {target.host}"


def check_old_tls_refused(target: Target) -> str:
    """A client that offers only TLS 1.1 gets no connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so this side can offer TLS 1.1 at all
    try:
        raw = socket.create_connection((target.host, target.port), TIMEOUT_SECONDS)
    except OSError as exc:
        raise CheckFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from None
    try:
        with context.wrap_socket(raw, server_hostname=target.host) as tls:
            raise CheckFailed(f"the server accepted {tls.version()}")
    except ssl.SSLError as exc:
        if exc.reason == "NO_PROTOCOLS_AVAILABLE":
            raise CheckFailed("this machine's OpenSSL cannot offer TLS 1.1 to test") from None
        return f"TLS 1.1 refused ({exc.reason})"
    except OSError as exc:  # the server closed the connection on the TLS 1.1 hello
        return f"TLS 1.1 refused (connection closed: {exc.__class__.__name__})"
    finally:
        raw.close()


def expect_status(response: requests.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise CheckFailed(f"{what}: HTTP {response.status_code}, want {status}")


def check_health(target: Target) -> str:
    started = time.monotonic()
    response = target.session(None).get(target.url + "/health", timeout=TIMEOUT_SECONDS)
    expect_status(response, 200, "GET /health")
    return f"200 in {(time.monotonic() - started) * 1000:.0f} ms"


def check_no_credentials(target: Target) -> str:
    response = target.session(None).get(target.url + PROBE, timeout=TIMEOUT_SECONDS)
    expect_status(response, 401, "the API without credentials")
    return "401"


def check_wrong_password(target: Target) -> str:
    user = next(iter(target.users))
    wrong = "not-" + secrets.token_urlsafe(24)
    response = target.session(user, wrong).get(target.url + PROBE, timeout=TIMEOUT_SECONDS)
    expect_status(response, 401, f"the API as {user} with a wrong password")
    return "401"


def check_user(target: Target, user: str) -> str:
    """The user logs in where their role lets them: metrics users on /metrics, readers on the
    API with a write refused (an invalid one, which MLflow would answer 400 if it got it)."""
    session = target.session(user)
    role = target.role(user)
    if role == "metrics":
        response = session.get(target.url + "/metrics", timeout=TIMEOUT_SECONDS)
        expect_status(response, 200, f"/metrics as {user} (role metrics)")
        return "200 on /metrics (role metrics)"
    response = session.get(target.url + PROBE, timeout=TIMEOUT_SECONDS)
    expect_status(response, 200, f"the API as {user}")
    if role == "read":
        refused = session.post(
            f"{target.url}{API}/experiments/create", json={}, timeout=TIMEOUT_SECONDS
        )
        expect_status(refused, 403, f"a write as {user} (role read)")
        return "200, a write refused with 403 (role read)"
    return "200"


class Api:
    """MLflow's REST API as one user, failing with the call that failed."""

    def __init__(self, target: Target, user: str) -> None:
        self.base = target.url
        self.session = target.session(user)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT_SECONDS)
        response = self.session.request(method, self.base + path, **kwargs)
        if not response.ok:
            raise CheckFailed(
                f"{method} {path.split('?')[0]}: HTTP {response.status_code} "
                f"{' '.join(response.text[:200].split())}"
            )
        return response

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self.call("POST", API + path, json=body).json()
        return data

    def get(self, endpoint: str, **params: str) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", API + endpoint, params=params).json()
        return data


@dataclass
class Roundtrip:
    """The round-trip check's experiment, removed afterwards whatever happened."""

    api: Api
    experiment_id: str | None = None
    run_id: str | None = None
    artifact_path: str | None = None

    def run(self) -> str:
        started = time.monotonic()
        name = f"mlflow-aws-verify-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        self.experiment_id = self.api.post("/experiments/create", {"name": name})["experiment_id"]
        info = self.api.post(
            "/runs/create",
            {"experiment_id": self.experiment_id, "start_time": int(time.time() * 1000)},
        )["run"]["info"]
        self.run_id = info["run_id"]
        params = {"check": "make verify", "artifact_bytes": str(ARTIFACT_BYTES)}
        metric = {"key": "verify_metric", "value": 0.875, "timestamp": 1, "step": 3}
        self.api.post(
            "/runs/log-batch",
            {
                "run_id": self.run_id,
                "params": [{"key": k, "value": v} for k, v in params.items()],
                "metrics": [metric],
            },
        )
        payload = secrets.token_bytes(ARTIFACT_BYTES)
        root = urlsplit(info["artifact_uri"]).path.strip("/")  # mlflow-artifacts:/<exp>/<run>/...
        self.artifact_path = f"{ARTIFACTS_API}/{root}/verify/payload.bin"
        self.api.call("PUT", self.artifact_path, data=payload, timeout=120)
        self.api.post(
            "/runs/update",
            {"run_id": self.run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
        )

        data = self.api.get("/runs/get", run_id=self.run_id)["run"]["data"]
        got_params = {p["key"]: p["value"] for p in data.get("params", [])}
        got_metrics = {m["key"]: (m["value"], m["step"]) for m in data.get("metrics", [])}
        if got_params != params:
            raise CheckFailed(f"params came back as {got_params}, want {params}")
        if got_metrics.get("verify_metric") != (0.875, 3):
            raise CheckFailed(f"metric came back as {got_metrics}")
        listed = self.api.get("/artifacts/list", run_id=self.run_id, path="verify")
        sizes = {f["path"]: int(f.get("file_size", -1)) for f in listed.get("files", [])}
        if sizes != {"verify/payload.bin": ARTIFACT_BYTES}:
            raise CheckFailed(f"artifact listing shows {sizes}")
        downloaded = self.api.call("GET", self.artifact_path, timeout=120).content
        if hashlib.sha256(downloaded).digest() != hashlib.sha256(payload).digest():
            raise CheckFailed(f"artifact came back different ({len(downloaded)} bytes)")
        seconds = time.monotonic() - started
        return f"2 params, 1 metric, 1 MiB artifact (sha256 equal) in {seconds:.1f} s"

    def remove(self) -> str:
        """Delete what run() created; the experiment ends up in the deleted state."""
        if self.experiment_id is None:
            return "nothing to remove"
        if self.artifact_path is not None:
            self.api.call("DELETE", self.artifact_path)
        if self.run_id is not None:
            self.api.post("/runs/delete", {"run_id": self.run_id})
        self.api.post("/experiments/delete", {"experiment_id": self.experiment_id})
        stage = self.api.get("/experiments/get", experiment_id=self.experiment_id)["experiment"][
            "lifecycle_stage"
        ]
        if stage != "deleted":
            raise CheckFailed(f"experiment {self.experiment_id} is still {stage}")
        return f"experiment {self.experiment_id} and its artifact deleted"


# ----------------------------------------------------------------------------- running them


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    passed: int = 0

    def check(self, name: str, run: Callable[[], str]) -> bool:
        try:
            detail = run()
        except CheckFailed as exc:
            return self._fail(name, str(exc))
        except requests.RequestException as exc:
            return self._fail(name, f"{exc.__class__.__name__}: {short(exc)}")
        self.passed += 1
        self.emit(f"ok    {name}: {detail}")
        return True

    def _fail(self, name: str, why: str) -> bool:
        self.failed.append(name)
        self.emit(f"FAIL  {name}: {why}")
        return False

    def emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def summary(self) -> str:
        total = self.passed + len(self.failed)
        if not self.failed:
            return f"make verify: all {total} checks passed"
        return (
            f"make verify: FAILED {', '.join(self.failed)} "
            f"({len(self.failed)} of {total} checks failed)"
        )


def short(exc: Exception) -> str:
    """The innermost reason of a requests error (e.g. 'Connection refused'), on one line."""
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known"):
        if marker in text:
            return marker
    return text.replace("\n", " ")[:200]


def run_checks(target: Target, report: Report) -> None:
    report.check("tls", lambda: check_tls(target))
    report.check("tls-1.1-refused", lambda: check_old_tls_refused(target))
    report.check("health", lambda: check_health(target))
    report.check("401-without-credentials", lambda: check_no_credentials(target))
    report.check("401-wrong-password", lambda: check_wrong_password(target))
    for user in target.users:
        report.check(f"user-{user}", functools.partial(check_user, target, user))
    # The run is created by a user who may write (the first one; readers and metrics users may not).
    writers = [user for user in target.users if target.role(user) == "write"]
    roundtrip = Roundtrip(Api(target, (writers or list(target.users))[0]))
    with always(lambda: report.check("cleanup", roundtrip.remove)):
        report.check("run-roundtrip", roundtrip.run)


@contextmanager
def always(finish: Callable[[], object]) -> Iterator[None]:
    try:
        yield
    finally:
        finish()


# ----------------------------------------------------------------------------- inputs


def configured_users(users_file: Path) -> dict[str, str]:
    """Names in `mlflow_users` of the group vars (or another vars file with that key), each with
    its role (write when not given; the playbook has checked the roles)."""
    try:
        data = yaml.safe_load(users_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CredentialsError(f"cannot read mlflow_users from {users_file}: {exc}") from None
    users = data.get("mlflow_users") if isinstance(data, dict) else None
    entries = [u for u in users or [] if isinstance(u, dict)]
    names = [u.get("name") for u in entries]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise CredentialsError(f"no users in mlflow_users of {users_file}: declare them there")
    return {str(u["name"]): str(u.get("role") or "write") for u in entries}


def user_password(stack_dir: Path, users_file: Path, user: str) -> str:
    """The password a user logs in with: their password_file, else the generated one."""
    data = yaml.safe_load(users_file.read_text(encoding="utf-8")) or {}
    entry = next(u for u in data["mlflow_users"] if isinstance(u, dict) and u.get("name") == user)
    if entry.get("password_file"):
        path = resolve_path(str(entry["password_file"]), REPO_ROOT / "ansible")
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CredentialsError(f"cannot read password_file of {user} ({path}): {exc}") from None
    return read_password(stack_dir, user)


def build_target(args: argparse.Namespace) -> Target:
    stack = check_stack_name(args.stack)
    outputs_file = resolve_path(args.outputs_file, Path.cwd()) if args.outputs_file else None
    outputs: StackOutputs = load_outputs(stack, REPO_ROOT, outputs_file)
    stack_dir = credentials_dir() / stack
    users_file = resolve_path(args.users_file, Path.cwd())
    roles = configured_users(users_file)
    users = {user: user_password(stack_dir, users_file, user) for user in roles}
    cert = client_certificate(outputs, stack_dir)
    return Target(outputs.url.rstrip("/"), str(cert) if cert else True, users, roles)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inventory_plugin.verify",
        description="Check a configured stack from the outside, as its users reach it.",
    )
    parser.add_argument("--stack", default=os.environ.get("STACK") or "dev")
    parser.add_argument("--outputs-file", default=os.environ.get(OUTPUTS_FILE_ENV) or None)
    parser.add_argument(
        "--users-file",
        default=os.environ.get(USERS_FILE_ENV) or str(GROUP_VARS_FILE),
        help="vars file with mlflow_users (default: ansible/group_vars/all.yml)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        target = build_target(args)
    except (CredentialsError, StackOutputsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR_EXIT_CODE
    print(f"make verify: {target.url} ({len(target.users)} users)", flush=True)
    report = Report()
    run_checks(target, report)
    print(report.summary(), flush=True)
    return FAILED_EXIT_CODE if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
