"""An ACME certificate authority for tests: pebble (Debian package) on the slot's gateway.

Validation is real: pebble fetches HTTP-01 challenges from port 80 of the test hosts over the
bed's bridge (no PEBBLE_VA_ALWAYS_VALID). Names resolve through pebble-challtestsrv's DNS,
which answers only the A records a test adds. pebble's directory is HTTPS with a certificate of
a throwaway CA made here (`directory_ca`: what the hosts' certbot must trust; made on first use
and kept while pebble is stopped, like an operator's CA file that does not vanish when the ACME
server is down). The certificates pebble issues chain to a root it makes at each start
(`root_pem()`: what clients must trust). Its files and logs live in the state dir; nothing is
trusted outside the tests. HTTP goes through urllib: `python -m standin` runs on the system
Python, which has no requests.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from .slot import Slot
from .util import HarnessError, process_alive, run, say, wait_for

PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # validate at once (not after 0-15 s)
    "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce answers
    "PEBBLE_AUTHZREUSE": "0",  # every order is validated again (renewals too)
}


class Pebble:
    """pebble + pebble-challtestsrv (DNS only) of one bed. `start()`, `stop()`, `add_a()`."""

    def __init__(self, state_dir: Path, slot: Slot) -> None:
        self.slot = slot
        self.gateway = slot.gateway
        self.dir = state_dir / "pebble"
        self.logs = state_dir / "logs"
        self.port = slot.acme_port
        self.management_port = slot.acme_port + 1
        self.dns_port = slot.acme_port + 2
        self.dns_management_port = slot.acme_port + 3
        self.directory_url = f"https://{self.gateway}:{self.port}/dir"
        self._directory_ca = self.dir / "directory-ca.pem"

    # ----- files -------------------------------------------------------------------------

    @property
    def directory_ca(self) -> Path:
        """The CA file of pebble's directory (HTTPS): exists whether pebble runs or not."""
        self._ensure_tls()
        return self._directory_ca

    def _ensure_tls(self) -> None:
        """A CA and, signed by it, the certificate of pebble's own HTTPS (the gateway's IP).

        Both carry the extensions strict verifiers require (Python 3.13's default
        VERIFY_X509_STRICT, which certbot on Debian 13 uses: a CA without keyUsage is refused).
        Files made without them (an older state dir) are made again.
        """
        key, cert = self.dir / "listener.key", self.dir / "listener.pem"
        ext = self.dir / "listener.ext"
        wanted = (
            f"subjectAltName=IP:{self.gateway}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
        )
        made = cert.exists() and self._directory_ca.exists() and ext.exists()
        if made and ext.read_text() == wanted:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        ca_key = self.dir / "directory-ca.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-noenc", "-keyout", ca_key, "-out", self._directory_ca, "-days", "30",
             "-subj", "/CN=mlflow-aws test ACME directory CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
        csr = self.dir / "listener.csr"
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-noenc", "-keyout", key, "-out", csr, "-subj", f"/CN={self.gateway}"])  # fmt: skip
        ext.write_text(wanted)
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self._directory_ca, "-CAkey", ca_key,
             "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", ext])  # fmt: skip

    def _write_config(self) -> Path:
        config = self.dir / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"{self.gateway}:{self.port}",
            "managementListenAddress": f"{self.gateway}:{self.management_port}",
            "certificate": str(self.dir / "listener.pem"),
            "privateKey": str(self.dir / "listener.key"),
            "httpPort": 80,  # HTTP-01 goes to the host's real port 80
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            # Let's Encrypt's profiles: shortlived (what the role asks for by default, the only
            # one for IP addresses) 160 hours, with no subject CN like Let's Encrypt's; classic
            # 90 days. The default (no profile asked) is short too: pebble's own default of
            # 5 years is allowed by no Mozilla configuration.
            "profiles": {
                "default": {"description": "160 hours", "validityPeriod": 160 * 3600},
                "shortlived": {"description": "160 hours", "validityPeriod": 160 * 3600},
                "classic": {"description": "90 days", "validityPeriod": 90 * 86400},
            },
        }}, indent=2))  # fmt: skip
        return config

    # ----- processes ---------------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def pid(self, name: str = "pebble") -> int | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text())
        return pid if process_alive(pid) else None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=os.environ | env,
            )  # fmt: skip
        self._pid_file(name).write_text(f"{proc.pid}\n")

    def start(self) -> None:
        """Start the DNS stub and pebble (each only if not running); wait until they answer."""
        self._ensure_tls()
        if self.pid("challtestsrv") is None:
            self._spawn("challtestsrv", [
                "pebble-challtestsrv", "-dnsserver", f"{self.gateway}:{self.dns_port}", "-doh", "",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"{self.gateway}:{self.dns_management_port}",
                "-defaultIPv4", "", "-defaultIPv6", "",
            ], {})  # fmt: skip
        if self.pid() is None:
            self._spawn("pebble", [
                "pebble", "-config", str(self._write_config()),
                "-dnsserver", f"{self.gateway}:{self.dns_port}",
            ], PEBBLE_ENV)  # fmt: skip
        wait_for(f"pebble on {self.directory_url}", self._answers, 30)
        say(f"pebble (ACME) listening on {self.directory_url}")

    def _answers(self) -> bool:
        for name in ("pebble", "challtestsrv"):
            if self.pid(name) is None:
                raise HarnessError(f"{name} exited; see {self.logs / (name + '.log')}")
        try:
            self._request(self.directory_url, timeout=2)
            self._request(self._dns_api("set-default-ipv4"), timeout=2, ok_if_error=True)
        except (OSError, HarnessError):  # refused, timed out (URLError), or an HTTP error
            return False
        return True

    def _request(
        self, url: str, body: bytes | None = None, timeout: float = 5, ok_if_error: bool = False
    ) -> str:
        """GET (or POST `body` as JSON) with pebble's directory CA trusted; the body as text."""
        if not url.startswith(("https://", "http://")):
            raise HarnessError(f"not an HTTP(S) URL: {url}")
        context = ssl.create_default_context(cafile=self._directory_ca)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (checked)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
                return response.read().decode()
        except urllib.error.HTTPError as error:  # the server answers: enough for a probe
            if ok_if_error:
                return ""
            raise HarnessError(f"{url}: HTTP {error.code} {error.reason}") from error

    def stop(self, name: str | None = None) -> None:
        """Stop pebble and the DNS stub (or only `name`); idempotent."""
        for each in [name] if name else ["pebble", "challtestsrv"]:
            pid = self.pid(each)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                try:
                    wait_for(f"{each} to exit", lambda n=each: self.pid(n) is None, 10)
                except HarnessError:
                    os.kill(pid, signal.SIGKILL)
            self._pid_file(each).unlink(missing_ok=True)

    # ----- what tests use ----------------------------------------------------------------

    def _dns_api(self, path: str) -> str:
        return f"http://{self.gateway}:{self.dns_management_port}/{path}"

    def add_a(self, name: str, address: str) -> None:
        """Answer A queries for `name` with `address` (pebble resolves names through this)."""
        body = {"host": name.rstrip(".") + ".", "addresses": [address]}
        self._request(self._dns_api("add-a"), json.dumps(body).encode())

    def root_pem(self) -> str:
        """The root of the certificates this pebble run issues (new at every start)."""
        return self._request(f"https://{self.gateway}:{self.management_port}/roots/0")
