"""HAProxy on the test network, standing in for the AWS Application Load Balancer.

What the ALB does for a stack with several hosts (infra/loadbalancer.py), scaled down in time:
HTTPS on 443 with its own certificate, round robin over the hosts' nginx on 443 (backend
certificates not verified, as the ALB does not), and a health check of `/health` that takes a
host out after 2 failures and back after 2 passes. The ALB checks every 10 s; here every
0.5 s, so `DRAIN_SECONDS` (what the stack outputs tell the playbook to wait around a restart)
is 3 instead of 25. Each response names the host that served it (`X-Served-By`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from standin import Host
from standin.util import HarnessError

CHECK_INTERVAL_MS = 500
FALL = 2
RISE = 2
# Enough for FALL (or RISE) checks plus a margin: the stack output `drain_seconds`.
DRAIN_SECONDS = 3
PORT = 443

CONFIG = """\
global
    stats socket {directory}/admin.sock mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 60s

frontend mlflow
    bind {address}:{port} ssl crt {directory}/balancer.pem
    default_backend mlflow

backend mlflow
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    http-response set-header X-Served-By %s
    default-server ssl verify none check inter {interval}ms fall {fall} rise {rise}
{servers}
"""


class Balancer:
    """One HAProxy process in front of `hosts`, listening on `address`:443."""

    def __init__(self, hosts: list[Host], address: str, directory: Path) -> None:
        self.hosts, self.address, self.directory = hosts, address, directory
        self.certificate = directory / "balancer.crt"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def start(self) -> Balancer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._make_certificate()
        servers = "\n".join(f"    server {h.name} {h.ip}:443" for h in self.hosts)
        settings = {"interval": CHECK_INTERVAL_MS, "fall": FALL, "rise": RISE, "port": PORT}
        self.config.write_text(
            CONFIG.format(
                directory=self.directory, address=self.address, servers=servers, **settings
            )
        )
        subprocess.run(["haproxy", "-c", "-q", "-f", self.config], check=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["haproxy", "-db", "-f", self.config], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while not _port_open(self.address, PORT):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"haproxy did not start: see {self.log}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def _make_certificate(self) -> None:
        key = self.directory / "balancer.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-noenc", "-keyout", key, "-out", self.certificate, "-days", "2",
             "-subj", f"/CN={self.address}", "-addext", f"subjectAltName=IP:{self.address}"],
            check=True, capture_output=True,
        )  # fmt: skip
        (self.directory / "balancer.pem").write_bytes(
            self.certificate.read_bytes() + key.read_bytes()
        )

    def states(self) -> dict[str, str]:
        """Health of each host as HAProxy sees it: UP, DOWN, or a transition ('UP 1/2')."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.connect(str(self.directory / "admin.sock"))
            admin.sendall(b"show stat\n")
            data = b""
            while chunk := admin.recv(65536):
                data += chunk
        lines = [line for line in data.decode().splitlines() if line.strip()]
        header = lines[0].removeprefix("# ").split(",")  # pxname,svname,...,status,...
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "mlflow"
                and row["svname"] not in ("FRONTEND", "BACKEND")}  # fmt: skip

    def wait_for(self, host: Host, state: str, timeout: float = 60) -> float:
        """Seconds until HAProxy reports `host` in `state` (UP or DOWN)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.states().get(host.name) == state:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"{host.name} not {state} within {timeout} s: {self.states()}")


def _port_open(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
    except OSError:
        return False
    return True
