"""TLS mode acme: trusted certificates from an ACME CA (pebble on the bed's gateway).

pebble validates for real: it fetches the HTTP-01 challenge from port 80 of the test host over
the bed's bridge. Its root is trusted only inside these tests (clients' CA bundle, sslyze's CA
file, an NSS database of a throwaway Chromium profile). The shared stack pins self-signed
certificates: this module switches the same hosts to acme (same users and passwords) and back
to self-signed at the end.

In order: pebble down during the first acme converge (self-signed served, one-line reason,
run succeeds); pebble back: the next run installs a certificate for the host's IP, and a rerun
changes nothing; `make credentials` stops pinning; the MLflow client with pebble's root and no
pinned certificate; sslyze; headless Chromium; a forced renewal under keep-alive load; a
certificate for a domain name (pebble resolves it through its DNS stub).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from standin import Host
from standin.acme import Pebble
from standin.util import REPO_ROOT
from tests.integration.browser import Browser
from tests.integration.figures import figure
from tests.integration.hammer import Hammer
from tests.integration.stack import STACK, Stack
from tests.integration.test_security import sslyze_issues

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow/experiments/search?max_results=1"
NO_CERT_YET = "No trusted certificate yet for "
TEST_DOMAIN = "mlflow.e2e.test"
ARTIFACTS = REPO_ROOT / ".cache" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip


@dataclasses.dataclass
class Acme:
    """The ACME test CA and the stack switched to acme mode against it."""

    pebble: Pebble
    stack: Stack  # acme outputs, same credentials and users as the shared stack
    work: Path

    def root(self) -> Path:
        """pebble's current root (a new one at every pebble start), as a CA file."""
        path = self.work / "pebble-root.pem"
        path.write_text(self.pebble.root_pem())
        return path


def acme_outputs(stack: Stack, pebble: Pebble, path: Path, hosts: list[Host], **tls: str) -> Path:
    outputs = json.loads(stack.bed.outputs_file.read_text())
    names = {h.name for h in hosts}
    outputs["hosts"] = [h for h in outputs["hosts"] if h["name"] in names]
    outputs["tls"] = {"mode": "acme", "acme_directory_url": pebble.directory_url, **tls}
    path.write_text(json.dumps(outputs))
    path.chmod(0o600)
    return path


def acme_stack(stack: Stack, acme: Acme, name: str, hosts: list[Host], **tls: str) -> Stack:
    outputs = acme_outputs(stack, acme.pebble, acme.work / f"{name}.json", hosts, **tls)
    bundle = ("-e", f"nginx_basic_auth_acme_ca_bundle={acme.pebble.directory_ca}")
    return dataclasses.replace(stack, outputs_file=outputs, extra=(*stack.extra, *bundle))


@pytest.fixture(scope="module")
def acme(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    pebble = stack.bed.pebble
    work = tmp_path_factory.mktemp("acme")
    holder = Acme(pebble, stack, work)
    holder.stack = acme_stack(stack, holder, "ip", stack.bed.hosts)
    try:
        yield holder
    finally:
        pebble.stop()
        # Back to the shared stack's self-signed certificates (fetched again for pinning).
        stack.configure(echo=False).check()
        for host in stack.bed.hosts:
            assert stack.get(host, API).ok


def served_certificate(host: Host, server_name: str | None = None) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host.ip, 443), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=server_name or host.ip) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    return [str(name.value) for name in ext]  # type: ignore[attr-defined]


def reason_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if NO_CERT_YET in line]


def credentials_lines(stack: Stack) -> list[str]:
    env = os.environ | {
        "MLFLOW_AWS_CREDENTIALS_DIR": str(stack.credentials_dir),
        "MLFLOW_AWS_OUTPUTS_FILE": str(stack.outputs_file or stack.bed.outputs_file),
    }
    result = subprocess.run(
        [sys.executable, "-m", "inventory_plugin.credentials", "--stack", STACK],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


# ----- first converge: the ACME server is down -------------------------------------------------


def test_acme_server_down_first_converge_serves_self_signed(acme: Acme) -> None:
    acme.pebble.stop()
    run = acme.stack.configure().check()
    hosts = acme.stack.bed.hosts
    lines = reason_lines(run.output)
    # One line per host, naming what it is for and why (certbot's own reason).
    assert len(lines) == len(hosts), run.output[-3000:]
    figure(f"acme, ACME server down: run succeeded in {run.seconds:.0f} s; {lines[0].strip()}")
    for host in hosts:
        assert sum(f"{NO_CERT_YET}{host.ip} (" in line for line in lines) == 1
    assert all("Connection refused" in line or "connect" in line.lower() for line in lines)
    for host in hosts:
        # Self-signed, pinned as before: the server never stops serving.
        assert acme.stack.cert(host).is_file()
        assert acme.stack.get(host, API).ok
        assert (
            host.run("systemctl is-enabled mlflow-certbot-renew.timer").stdout.strip() == "enabled"
        )


# ----- pebble back: the next run installs the certificate ---------------------------------------


def test_next_run_installs_a_trusted_certificate_for_the_ip(acme: Acme) -> None:
    acme.pebble.start()
    run = acme.stack.configure().check()
    assert reason_lines(run.output) == []
    root = acme.root()
    for host in acme.stack.bed.hosts:
        cert = served_certificate(host)
        assert sans(cert) == [host.ip]
        # Chains to pebble's root: no pinned certificate, the client's CA bundle suffices.
        response = requests.get(f"https://{host.ip}/health", verify=str(root), timeout=10)
        assert response.ok
        # The pinned copy is gone: a client would otherwise keep pinning an old certificate.
        assert not acme.stack.cert(host).exists()
        # Port 80 still redirects everything but the challenge location to HTTPS.
        plain = requests.get(f"http://{host.ip}/x?y=1", allow_redirects=False, timeout=10)
        assert (plain.status_code, plain.headers["Location"]) == (301, f"https://{host.ip}/x?y=1")
        challenge = f"http://{host.ip}/.well-known/acme-challenge/none"
        assert requests.get(challenge, allow_redirects=False, timeout=10).status_code == 404
    figure(f"acme: first certificate for the IP of 2 hosts in a converge of {run.seconds:.0f} s")

    rerun = acme.stack.configure(echo=False).check()
    assert set(rerun.changed().values()) == {0}, rerun.output[-3000:]
    figure(f"acme: rerun with a valid certificate {rerun.seconds:.0f} s, 0 changed")


def test_credentials_do_not_pin_a_trusted_certificate(acme: Acme) -> None:
    lines = credentials_lines(acme.stack)
    assert "unset MLFLOW_TRACKING_SERVER_CERT_PATH" in lines
    assert not any(line.startswith("export MLFLOW_TRACKING_SERVER_CERT_PATH") for line in lines)


def test_mlflow_client_trusts_the_ca_without_a_pinned_certificate(acme: Acme) -> None:
    host = acme.stack.bed.hosts[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        MLFLOW_TRACKING_URI=f"https://{host.ip}",
        MLFLOW_TRACKING_USERNAME="team",
        MLFLOW_TRACKING_PASSWORD=acme.stack.password("team"),
        REQUESTS_CA_BUNDLE=str(acme.root()),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )
    script = (
        "import mlflow\n"
        "mlflow.set_experiment('tls-acme')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('x', 1.5)\n"
        "print(mlflow.get_run(run.info.run_id).data.metrics['x'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "1.5"
    # Without the CA the same client refuses the server: the CA bundle is what made it work.
    env["REQUESTS_CA_BUNDLE"] = certifi_bundle()
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


def certifi_bundle() -> str:
    import certifi

    return certifi.where()


def test_sslyze_mozilla_intermediate_with_path_validation(acme: Acme) -> None:
    host = acme.stack.bed.hosts[0]
    status, issues = sslyze_issues(host, acme.root(), by_ip=True)
    assert (status, issues) == (0, [])


# ----- a browser ---------------------------------------------------------------------------------


def chromium(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("chromium") or "chromium", *CHROMIUM_FLAGS,
         f"--user-data-dir={home / 'profile'}", *args],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def trusting_home(work: Path, root: Path | None) -> Path:
    """A fresh HOME whose NSS database (Chromium's trust store on Linux) trusts `root`."""
    home = work / ("home-trusting" if root else "home-plain")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    if root is not None:
        subprocess.run(
            ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "pebble", "-i", str(root)],
            check=True,
        )
    return home


def test_chromium_loads_the_ui_without_a_certificate_warning(acme: Acme) -> None:
    """The UI with its data, over the ACME certificate, as a browser trusting the CA shows it."""
    host = acme.stack.bed.hosts[0]
    auth = ("team", acme.stack.password("team"))
    root = acme.root()
    name = f"tls-chromium-{time.time_ns()}"  # what the page must show: its data loaded
    created = requests.post(
        f"https://{host.ip}/api/2.0/mlflow/experiments/create", json={"name": name},
        auth=auth, verify=str(root), timeout=30,
    )  # fmt: skip
    assert created.ok, created.text[:500]
    home = trusting_home(acme.work, root)
    started = time.monotonic()
    browser = Browser(home / "profile", None, home=home)  # trusts pebble's root, pins nothing
    try:
        browser.basic_auth(*auth)
        browser.open(f"https://{host.ip}/#/experiments")
        text = browser.wait_for_text(name)
        shot = browser.screenshot(ARTIFACTS / "tls-acme-chromium.png")
        ours = [(status, url) for status, _, url in browser.responses if host.ip in url]
    finally:
        browser.close()
    assert "load your experiments" not in text, text[:1500]
    assert ours, browser.responses
    # Every API call of the page got in (no 401/403) and was served (no 5xx).
    assert [r for r in ours if r[0] in (401, 403) or r[0] >= 500] == []
    assert shot.stat().st_size > 10_000
    seconds = time.monotonic() - started
    figure(f"chromium: MLflow UI over the ACME certificate, {len(ours)} responses, none refused "
           f"({seconds:.0f} s), {shot.name}")  # fmt: skip
    # The control: the same browser without pebble's root refuses the certificate (headless
    # Chromium reports the failed page load on stderr and dumps no page).
    plain = chromium(trusting_home(acme.work, None), "--dump-dom", f"https://{host.ip}/")
    assert "<title>MLflow</title>" not in plain.stdout
    assert "ERR_CERT_AUTHORITY_INVALID" in plain.stdout + plain.stderr, plain.stderr[-2000:]


# ----- renewal ---------------------------------------------------------------------------------


def test_forced_renewal_under_keep_alive_load_fails_no_request(acme: Acme) -> None:
    host = acme.stack.bed.hosts[0]
    before = served_certificate(host).serial_number
    # The timer's own unit runs (a certificate not yet due: nothing to do, success).
    assert host.run("systemctl start mlflow-certbot-renew.service", check=False).returncode == 0
    assert served_certificate(host).serial_number == before
    renew = (
        "REQUESTS_CA_BUNDLE=/etc/letsencrypt/acme-directory-ca.pem /opt/certbot/venv/bin/certbot "
        "renew --force-renewal --non-interactive --no-random-sleep-on-renew"
    )
    url = f"https://{host.ip}{API}"
    auth = ("team", acme.stack.password("team"))
    hammers = [Hammer(url, auth, acme.root()) for _ in range(4)]
    with contextlib.ExitStack() as running:
        for hammer in hammers:
            running.enter_context(hammer)
        time.sleep(2)
        started = time.monotonic()
        result = host.run(renew, check=False)
        seconds = time.monotonic() - started
        time.sleep(2)
    assert result.returncode == 0, result.stdout + result.stderr
    after = served_certificate(host).serial_number
    ok = sum(h.ok for h in hammers)
    failures = [f for h in hammers for f in h.failures]
    resent = sum(h.resent for h in hammers)
    figure(
        f"acme renewal under keep-alive load (4 clients): renewal + reload {seconds:.1f} s, "
        f"{ok} requests ok, {len(failures)} failed, {resent} resent after an idle close"
    )
    assert after != before, "the renewed certificate is not served (deploy hook reload?)"
    assert failures == []
    assert ok > 50


# ----- a domain name ---------------------------------------------------------------------------


def test_certificate_for_a_domain_name(acme: Acme) -> None:
    host = acme.stack.bed.hosts[1]
    acme.pebble.add_a(TEST_DOMAIN, host.ip)
    domain = acme_stack(acme.stack, acme, "domain", [host], domain=TEST_DOMAIN)
    run = domain.configure().check()
    assert reason_lines(run.output) == []
    assert sans(served_certificate(host, TEST_DOMAIN)) == [TEST_DOMAIN]
    figure(f"acme: certificate for a domain name in a converge of {run.seconds:.0f} s")
    # A client reaching the server by name verifies it with pebble's root alone; MLflow accepts
    # the name (its allowed hosts follow the domain).
    pool = urllib3.HTTPSConnectionPool(
        host.ip, 443, server_hostname=TEST_DOMAIN, assert_hostname=TEST_DOMAIN,
        ca_certs=str(acme.root()), cert_reqs="CERT_REQUIRED",
    )  # fmt: skip
    headers = urllib3.make_headers(basic_auth=f"team:{domain.password('team')}")
    response = pool.request("GET", API, headers={**headers, "Host": TEST_DOMAIN})
    assert response.status == 200, response.data[:500]
    rerun = domain.configure(echo=False).check()
    assert set(rerun.changed().values()) == {0}, rerun.output[-3000:]
