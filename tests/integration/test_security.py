"""Security audit of a configured test stack: TLS, sandbox, ports, secrets, logins, SSH.

Every check looks at what an attacker or a curious local user would see: the TLS handshake
(sslyze against Mozilla's intermediate profile), `systemd-analyze security`, the sockets that
listen beyond the loopback, process listings and world-readable files while the playbook runs,
the operator's credentials folder, the git tree, password guessing over HTTPS, SSH logins.
"""

from __future__ import annotations

import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from standin import Host
from standin.playbook import VENV_BIN, PlaybookRun, run_playbook
from standin.util import REPO_ROOT
from tests.integration.figures import figure
from tests.integration.stack import STACK, USERS, Stack

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
# What the nginx_basic_auth role configures (defaults/main.yml) for requests without valid
# credentials: requests/s per address, and the queue of paced ones.
RATE_LIMIT = 2
HTPASSWD = "/etc/nginx/mlflow/htpasswd"
RATE_LIMIT_BURST = 20
# Real PEM private keys have several full base64 lines; test fixtures carry one short fake line.
PRIVATE_KEY_BLOCK = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=]{60,}\r?\n){3,}"
)


class Secrets(dict[str, str]):
    """Secret values by name; shown by name only, so a failing test never prints a secret
    (pytest prints the arguments of every frame in a traceback)."""

    def __repr__(self) -> str:
        return f"Secrets({', '.join(self)})"


def secrets_of(stack: Stack) -> Secrets:
    """Every secret of the stack, by name: passwords, the DB password, SSH and TLS key lines."""
    found = Secrets({f"password of {user}": stack.password(user) for user in USERS})
    found["database password"] = stack.bed.postgres.password
    # The first base64 lines of an OpenSSH key are a common header and the public key; the
    # fourth holds private material.
    found["SSH private key"] = stack.bed.ssh_key.read_text().splitlines()[4]
    for host in stack.bed.hosts:
        tls_key = host.run("cat /etc/nginx/mlflow/tls/selfsigned.key").stdout.splitlines()
        found[f"TLS key of {host.name}"] = tls_key[1]
    return found


def leaks(text: str, secrets: Secrets) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


# ----- TLS ---------------------------------------------------------------------------------


def sslyze_issues(host: Host, ca_file: Path, by_ip: bool = False) -> tuple[int, list[str]]:
    """sslyze's Mozilla intermediate check: exit status and the issues it lists.

    The host is reached by its name, or `by_ip` by its address alone: sslyze then validates the
    certificate for the IP address (an ACME certificate for the host's IP names nothing else).
    """
    target = f"{host.ip}:443" if by_ip else f"{host.dns_name}:443{{{host.ip}}}"
    result = subprocess.run(
        [str(VENV_BIN / "sslyze"), "--mozilla_config=intermediate",
         f"--certinfo_ca_file={ca_file}", target],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    compliance = result.stdout.split("COMPLIANCE AGAINST TLS CONFIGURATION")[-1]
    issues = [line.strip()[2:] for line in compliance.splitlines() if line.strip().startswith("* ")]
    verdicts = [line.strip() for line in compliance.splitlines() if "compliant" in line.lower()]
    figure(f"sslyze: {' | '.join(verdicts + issues)}")
    return result.returncode, issues


def issue_certificate(work: Path, host: Host) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signs for the host (as an operator would bring)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
            "-subj", "/CN=mlflow-aws test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host.dns_name}"
    )
    (work / "server.ext").write_text(
        f"subjectAltName=DNS:{host.dns_name},IP:{host.ip}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-out", "server.crt", "-days", "30", "-extfile", "server.ext")  # fmt: skip
    return work / "ca.crt", work / "server.crt", work / "server.key"


def test_tls_is_mozilla_intermediate_compliant(stack: Stack, tmp_path: Path) -> None:
    host = stack.bed.hosts[0]
    # The default self-signed certificate: everything complies; only sslyze's path validation
    # fails, as it must for a certificate that clients pin rather than chain to a CA.
    status, issues = sslyze_issues(host, stack.cert(host))
    assert [issue.split(":")[0] for issue in issues] == ["certificate_path_validation"]

    # With a certificate from a CA (the operator's own), the whole profile passes.
    ca, cert, key = issue_certificate(tmp_path, host)
    own = ["-e", "nginx_basic_auth_tls_mode=files",
           "-e", f"nginx_basic_auth_tls_certificate_src={cert}",
           "-e", f"nginx_basic_auth_tls_private_key_src={key}", "--limit", host.name]  # fmt: skip
    try:
        run_playbook(stack.bed.outputs_file, stack.credentials_dir, STACK,
                     ["-e", f"@{stack.users_file}", *own], echo=False).check()  # fmt: skip
        status, issues = sslyze_issues(host, ca)
        assert (status, issues) == (0, [])
    finally:  # back to the self-signed certificate, on the one host that changed
        stack.run_playbook("--limit", host.name, echo=False).check()
    assert stack.get(host, API).ok


# ----- the host ------------------------------------------------------------------------------


def test_mlflow_unit_exposure_is_at_most_2_5(stack: Stack) -> None:
    output = stack.bed.hosts[0].run(["systemd-analyze", "security", "--no-pager", "mlflow"])
    match = re.search(r"Overall exposure level for mlflow\.service: ([0-9.]+) (\w+)", output.stdout)
    assert match, output.stdout[-2000:]
    figure(f"systemd-analyze security mlflow.service: {match[1]} {match[2]}")
    assert float(match[1]) <= 2.5


def listening_beyond_loopback(host: Host) -> set[str]:
    """proto:port of every TCP listener and bound UDP socket not on a loopback address."""
    lines = host.run(["ss", "-Htuln"]).stdout.splitlines()
    found = set()
    for line in lines:
        proto, _state, _recv, _send, local, *_ = line.split()
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        if not (address.startswith("127.") or address == "::1"):
            found.add(f"{proto}:{port}")
    return found


def test_only_ssh_http_and_https_listen_beyond_loopback(stack: Stack) -> None:
    for host in stack.bed.hosts:
        assert listening_beyond_loopback(host) <= {"tcp:22", "tcp:80", "tcp:443"}, host.name
        assert {"tcp:22", "tcp:80", "tcp:443"} <= listening_beyond_loopback(host)


# ----- secrets -------------------------------------------------------------------------------


@dataclass
class ProcessWatch:
    """Samples `ps -eo args` on this machine and on every host until stopped."""

    hosts: list[Host]
    samples: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                               text=True).stdout)  # fmt: skip
            for host in self.hosts:
                self.samples.append(host.run(["ps", "-eo", "args"], check=False).stdout)
            time.sleep(0.1)

    def __enter__(self) -> ProcessWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def watched_run(stack: Stack) -> tuple[PlaybookRun, ProcessWatch]:
    """A verbose playbook run that backs up and migrates the database (as after a version
    change) while the process listings are sampled."""
    with ProcessWatch(stack.bed.hosts) as watch:
        run = run_playbook(
            stack.bed.outputs_file,
            stack.credentials_dir,
            STACK,
            ["-e", f"@{stack.users_file}", "-e", "mlflow_db_migrate=always", "-v"],
            echo=False,
        ).check()
    return run, watch


def test_no_secret_in_verbose_ansible_output(
    stack: Stack, watched_run: tuple[PlaybookRun, ProcessWatch]
) -> None:
    run, _ = watched_run
    assert "Dump the database" in run.output
    assert leaks(run.output, secrets_of(stack)) == []


def test_no_secret_in_process_listings_while_deploying(
    stack: Stack, watched_run: tuple[PlaybookRun, ProcessWatch]
) -> None:
    _, watch = watched_run
    assert len(watch.samples) > 20
    secrets = secrets_of(stack)
    assert [name for sample in watch.samples for name in leaks(sample, secrets)] == []


def test_no_secret_in_process_listings_while_serving(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    assert stack.get(host, API).ok
    listing = host.run(["ps", "-eo", "args"]).stdout
    assert "mlflow server" in listing
    assert leaks(listing, secrets_of(stack)) == []


def world_readable_matches(host: Host, secrets: Secrets, paths: list[str]) -> list[str]:
    """Files `nobody` can read that contain a secret (patterns come in on stdin, not argv)."""
    patterns = "\n".join(secrets.values()) + "\n"
    result = host.run(
        ["runuser", "-u", "nobody", "--", "grep", "-rlsIF", "-D", "skip", "-f", "-", *paths],
        input_text=patterns,
        check=False,
        timeout=600,
    )
    assert result.returncode in (0, 1, 2), result.stderr  # 1: no match, 2: unreadable files
    return result.stdout.split()


def test_no_secret_in_world_readable_files_on_hosts(stack: Stack) -> None:
    secrets = secrets_of(stack)
    paths = ["/etc", "/opt", "/var", "/home", "/root", "/srv", "/tmp", "/usr/local", "/run"]
    for host in stack.bed.hosts:
        assert world_readable_matches(host, secrets, paths) == [], host.name
        # The secrets are there, readable by root only: the search itself works.
        env_file = host.run(["stat", "-c", "%a %U", "/etc/mlflow/mlflow.env"]).stdout.split()
        assert env_file == ["600", "root"]


def test_no_secret_in_world_readable_files_on_the_operator_machine(stack: Stack) -> None:
    secrets = secrets_of(stack)
    readable = [str(REPO_ROOT), str(stack.credentials_dir), "/tmp"]
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "grep", "-rlsIF", "-D", "skip", "-f", "-",
         "--exclude-dir=.venv", "--exclude-dir=.venv-client", *readable],
        input="\n".join(secrets.values()) + "\n", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode in (0, 1, 2), result.stderr  # 2: unreadable files (as they should)
    assert result.stdout.split() == []


def test_operator_credentials_are_private(stack: Stack) -> None:
    root = stack.stack_dir
    entries = [root, *root.rglob("*")]
    assert len(entries) > 5
    for path in entries:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.name == "known_hosts":  # public host keys: only others' write access matters
            assert mode & 0o022 == 0, f"{path} is {oct(mode)}"
            continue
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def tracked_and_untracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return [REPO_ROOT / name for name in listed.decode().split("\0") if name]


def test_no_secret_or_private_key_in_the_git_tree(stack: Stack) -> None:
    secrets = secrets_of(stack)
    offenders = []
    for path in tracked_and_untracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        offenders += [f"{path}: {name}" for name in leaks(data.decode(errors="replace"), secrets)]
        if PRIVATE_KEY_BLOCK.search(data):
            offenders.append(f"{path}: private key")
    history = subprocess.run(
        ["git", "log", "--all", "-p", "--no-color"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    offenders += [f"history: {name}" for name in leaks(history.decode(errors="replace"), secrets)]
    if PRIVATE_KEY_BLOCK.search(history.replace(b"\n+", b"\n")):
        offenders.append("history: private key")
    assert offenders == []


# ----- password guessing ---------------------------------------------------------------------


@dataclass
class Guessing:
    """Wrong passwords from many threads at once; statuses by time of answer."""

    answers: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def guess(stack: Stack, host: Host, seconds: float, threads: int) -> Guessing:
    outcome = Guessing()
    deadline = time.monotonic() + seconds
    url = stack.url(host, API)
    cert = str(stack.cert(host))  # per request: REQUESTS_CA_BUNDLE would win over session.verify

    def attacker(number: int) -> None:
        session = requests.Session()
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                response = session.get(
                    url, auth=("team", f"guess-{number}-{attempt}"), verify=cert, timeout=60
                )
                outcome.answers.append((time.monotonic(), response.status_code))
            except requests.RequestException as error:
                outcome.errors.append(repr(error))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(attacker, range(threads)))
    return outcome


def right_user_from(host: Host, target: Host, stack: Stack) -> tuple[int, float]:
    """One request as team from inside `host` (its own address); credentials on stdin."""
    host.write_file("/tmp/target.crt", stack.cert(target).read_text())
    result = host.run(
        ["curl", "-sS", "--cacert", "/tmp/target.crt", "-K", "-", "-o", "/dev/null",
         "-w", "%{http_code} %{time_total}", stack.url(target, API)],
        input_text=f'user = "team:{stack.password("team")}"\n',
    )  # fmt: skip
    status, seconds = result.stdout.split()
    return int(status), float(seconds)


def test_password_guessing_is_slowed_while_the_right_user_gets_in(stack: Stack) -> None:
    target, other = stack.bed.hosts
    seconds = 10.0
    with ThreadPoolExecutor(1) as pool:
        attacking = pool.submit(guess, stack, target, seconds, 16)
        time.sleep(4)  # the attacker's address is being paced by now
        same_address = stack.get(target, API)
        other_status, other_latency = right_user_from(other, target, stack)
        attack = attacking.result()

    evaluated = sum(1 for _, status in attack.answers if status == 401)
    refused = sum(1 for _, status in attack.answers if status == 429)
    figure(
        f"guessing with 16 threads for {seconds:.0f} s: {evaluated} passwords checked "
        f"({evaluated / seconds:.0f}/s, limit {RATE_LIMIT}/s), {refused} refused (429); "
        f"right user from another address: HTTP {other_status} in {other_latency * 1000:.0f} ms, "
        f"from the attacker's address: HTTP {same_address.status_code} in "
        f"{same_address.elapsed.total_seconds() * 1000:.0f} ms"
    )
    assert attack.errors == []
    assert evaluated + refused == len(attack.answers)
    assert evaluated <= RATE_LIMIT_BURST + RATE_LIMIT * (seconds + 2)
    assert refused > 10 * evaluated  # refused before the password check: no hash, no answer
    assert other_status == 200
    assert other_latency < 2
    # Valid credentials are never limited, even from the attacker's own address.
    assert same_address.status_code == 200
    assert same_address.elapsed.total_seconds() < 2


@pytest.fixture
def htpasswd_emptied(stack: Stack) -> Iterator[Host]:
    """The htpasswd file replaced by an empty one, restored afterwards."""
    host = stack.bed.hosts[0]
    saved = host.read_file(HTPASSWD)
    host.run(["sh", "-c", f"cp -p {HTPASSWD} {HTPASSWD}.new && : > {HTPASSWD}.new && "
              f"mv {HTPASSWD}.new {HTPASSWD}"])  # fmt: skip
    yield host
    host.write_file(HTPASSWD, saved, mode="0640")
    host.run(["chgrp", "www-data", HTPASSWD])


def test_valid_credentials_skip_the_password_hash(stack: Stack, htpasswd_emptied: Host) -> None:
    """Valid headers are matched against the root-only digest map; only others reach the hash."""
    host = htpasswd_emptied
    assert stack.get(host, API).status_code == 200  # not in htpasswd: matched by the map
    assert stack.get(host, API, user=None).status_code == 401
    wrong = requests.get(stack.url(host, API), auth=("team", "not-the-password-" * 2),
                         verify=stack.cert(host), timeout=30)  # fmt: skip
    assert wrong.status_code == 401


# ----- SSH -----------------------------------------------------------------------------------


def password_login(host: Host, method: str) -> subprocess.CompletedProcess[str]:
    argv = host.ssh_argv()
    options = ["-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no",
               "-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]  # fmt: skip
    return subprocess.run(
        [argv[0], *options, *argv[1:], "true"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip


@pytest.fixture
def cloud_init_turns_passwords_on(stack: Stack) -> Iterator[Host]:
    """What Ubuntu's cloud-init may write: a later drop-in enabling passwords and root."""
    host = stack.bed.hosts[1]
    host.write_file(
        "/etc/ssh/sshd_config.d/50-cloud-init.conf",
        "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nPermitRootLogin yes\n",
    )
    host.systemctl("reload", "ssh")
    host.wait_ssh(30)  # a reload re-executes sshd, which listens again a moment later
    yield host
    host.run(["rm", "-f", "/etc/ssh/sshd_config.d/50-cloud-init.conf"])
    host.systemctl("reload", "ssh")
    host.wait_ssh(30)


def test_ssh_accepts_keys_only(stack: Stack, cloud_init_turns_passwords_on: Host) -> None:
    host = cloud_init_turns_passwords_on
    for method in ("password", "keyboard-interactive"):
        result = password_login(host, method)
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr, result.stderr
    applied = host.run(["sshd", "-T"]).stdout.splitlines()
    for line in ("passwordauthentication no", "kbdinteractiveauthentication no",
                 "permitrootlogin no", "authenticationmethods publickey"):  # fmt: skip
        assert line in applied
    assert host.ssh("id -un").stdout.strip() == "admin"  # the key still works
