"""Authenticated keep-alive requests in a loop on a thread, counting every failure.

Like browsers and Go's HTTP client (RFC 9112 section 9.3.1), a GET is resent once, at once,
when the server closed a reused idle connection before answering: an nginx reload closes its
old workers' idle keep-alive connections, and a request crossing that close never reached
MLflow. Those resends are counted in `resent`; anything else is a failure.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import requests


class Hammer:
    """GET `url` with `auth` until the `with` block ends; `cert` is the certificate to pin."""

    def __init__(self, url: str, auth: tuple[str, str], cert: Path) -> None:
        self.url, self.auth, self.cert = url, auth, str(cert)
        self.ok = 0
        self.resent = 0
        self.failures: list[str] = []
        self.served_by: Counter[str] = Counter()  # X-Served-By of a load balancer, if any
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _get(self, session: requests.Session) -> requests.Response:
        # Per request: a Session-level `verify` loses to REQUESTS_CA_BUNDLE in the environment.
        return session.get(self.url, timeout=30, verify=self.cert)

    def _loop(self) -> None:
        session = requests.Session()
        session.auth = self.auth
        while not self._stop.is_set():
            try:
                try:
                    response = self._get(session)
                except requests.ConnectionError as error:
                    if not closed_before_answer(error):
                        raise
                    self.resent += 1
                    response = self._get(session)
                if response.ok:
                    self.ok += 1
                    self.served_by[response.headers.get("X-Served-By", "")] += 1
                else:
                    self.failures.append(f"HTTP {response.status_code}")
            except requests.RequestException as error:
                self.failures.append(repr(error))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def closed_before_answer(error: requests.ConnectionError) -> bool:
    """Whether the server closed the connection without sending any response byte."""
    text = repr(error)
    return "RemoteDisconnected" in text or "ConnectionResetError" in text
