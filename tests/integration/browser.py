"""Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol.

No driver, no browser download: chromium talks CDP over two pipes (--remote-debugging-pipe, file
descriptors 3 and 4, messages are JSON separated by NUL bytes). Credentials travel in an
Authorization header set through CDP, never in a URL; the test server's self-signed certificate
is trusted by its public key hash (--ignore-certificate-errors-spki-list), nothing else, or,
for a CA-issued certificate, the CA through the NSS database in the browser's HOME.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root, in a test
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-proxy-server",  # test traffic goes straight to the test hosts
    "--window-size=1400,1000",
    "--remote-debugging-pipe",
]


def spki_hash(cert_pem: Path) -> str:
    """Base64 SHA-256 of the certificate's public key, as chromium's SPKI list wants it."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class BrowserError(Exception):
    pass


class Browser:
    """One headless chromium with one page; `responses` records (status, method, url) seen."""

    def __init__(self, profile: Path, trusted_cert: Path | None, home: Path | None = None) -> None:
        """`trusted_cert`: a self-signed certificate trusted by its key (None: only CAs are);
        `home`: HOME of the browser, whose NSS database (.pki/nssdb) holds the CAs it trusts."""
        binary = shutil.which("chromium")
        if binary is None:
            raise BrowserError("chromium is missing: bash .ci/install-test-deps.sh installs it")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def onto_3_and_4() -> None:  # in the child, before exec: CDP's fixed descriptors
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        if trusted_cert is not None:
            flags.append(f"--ignore-certificate-errors-spki-list={spki_hash(trusted_cert)}")
        env = {"HOME": str(home), "PATH": os.environ["PATH"]} if home else None
        self.process = subprocess.Popen(
            [binary, *flags, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=onto_3_and_4, env=env,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.responses: list[tuple[int, str, str]] = []
        self._methods: dict[str, str] = {}
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page.enable", "Network.enable", "Runtime.enable"):
            self.call(domain, session=True)

    # ----- the protocol --------------------------------------------------------------------

    def _read_message(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _note(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            self._methods[params["requestId"]] = params["request"]["method"]
        if message.get("method") == "Network.responseReceived":
            response = params["response"]
            method = self._methods.get(params["requestId"], "?")
            self.responses.append((response["status"], method, response["url"]))

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = False,
        timeout: float = 60,
    ) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self._read_message(deadline - time.monotonic())
            if answer is None:
                break
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._note(answer)
        raise BrowserError(f"{method}: no answer within {timeout} s")

    def pump(self, seconds: float) -> None:
        """Take in the events of the next few seconds."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self._read_message(left)
            if message is not None:
                self._note(message)

    # ----- what a test does -------------------------------------------------------------------

    def basic_auth(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        self.call("Network.setExtraHTTPHeaders", {"headers": headers}, session=True)

    def open(self, url: str) -> None:
        self.responses.clear()
        self.call("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 90) -> str:
        """The page's text once it shows every needle (MLflow's UI renders after its API calls)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(needle in text for needle in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise BrowserError(f"page never showed {missing}; it shows: {text[:1500]!r}")
            self.pump(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)
