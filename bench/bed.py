"""The benchmarks' test bed: one harness host configured by the real playbook, plus helpers.

It has its own state dir (.cache/bench-testhosts), stack name and test bed slot (SLOT: its own
bridge, addresses, ports and host names), so it runs beside the tests' beds (slots 0 and 1)
and never reuses their facts, SSH sockets or credentials. Beside a test run the figures are
noisier (the beds share the machine's cores); RESULTS.md says whether the machine was idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from standin import Host, Testbed
from standin.playbook import PlaybookRun, run_playbook
from standin.slot import Slot

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = REPO / ".cache" / "bench-testhosts"
OUT_DIR = REPO / "bench" / "out"
STACK = "bench"
USER = "team"
AGENT_SOURCE = Path(__file__).with_name("agent.py")
AGENT_PATH = "/root/bench-agent.py"
CALLBACK_DIR = Path(__file__).with_name("callback_plugins")
NGINX_SNIPPET = "/etc/nginx/conf.d/zz-bench-variant.conf"
NGINX_SITE = "/etc/nginx/conf.d/mlflow.conf"
# Slot 0 is the tests' default (and CI's), slot 1 the scale tests': the benchmarks take 2.
SLOT = 2


class BenchError(RuntimeError):
    """A benchmark could not run; the message says why."""


@dataclass
class TimedRun:
    """One playbook run with per-task timings from the bench_timer callback."""

    label: str
    run: PlaybookRun
    tasks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.run.seconds

    def changed(self) -> int:
        return sum(self.run.changed().values())


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Temporarily set environment variables (run_playbook copies os.environ)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Bench:
    """The bed, its stack's credentials and the agent inside its host."""

    def __init__(self, state_dir: Path = STATE_DIR, slot: int = SLOT) -> None:
        self.bed = Testbed(state_dir, Slot(slot))
        OUT_DIR.mkdir(parents=True, exist_ok=True)

    # ----- bed lifecycle ---------------------------------------------------------------

    def up_fresh(self) -> float:
        """A bare host: any earlier bench bed is removed first. Returns seconds taken."""
        started = time.monotonic()
        if self.bed.state():
            self.bed.down()
        self.bed.up(1)
        return time.monotonic() - started

    def reuse(self) -> None:
        if not self.bed.is_up():
            raise BenchError(f"--reuse: no bench bed is up in {self.bed.state_dir}")

    def down(self) -> None:
        self.bed.down()

    @property
    def host(self) -> Host:
        return self.bed.hosts[0]

    # ----- stack -----------------------------------------------------------------------

    @property
    def stack_dir(self) -> Path:
        return self.bed.credentials_dir / STACK

    def password(self, user: str = USER) -> str:
        return (self.stack_dir / "users" / f"{user}.password").read_text().strip()

    def cert(self) -> Path:
        return self.stack_dir / f"{self.host.name}.crt"

    def public_url(self) -> str:
        return f"https://{self.host.ip}"

    def playbook(self, label: str, extra_args: list[str] | None = None) -> TimedRun:
        """Run site.yml as `make configure` does, timing each task; fail if it fails."""
        timer_file = OUT_DIR / f"tasks-{label}.json"
        timer_file.unlink(missing_ok=True)
        env = {
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "bench_timer",
            "BENCH_TIMER_FILE": str(timer_file),
        }
        with _env(env):
            run = run_playbook(
                self.bed.outputs_file, self.bed.credentials_dir, STACK, extra_args, echo=False
            )
        (OUT_DIR / f"playbook-{label}.log").write_text(run.output)
        run.check()
        tasks = json.loads(timer_file.read_text())["tasks"] if timer_file.exists() else []
        return TimedRun(label, run, tasks)

    def close_ssh_masters(self) -> int:
        """End the ControlPersist master connections: the next run starts SSH afresh."""
        closed = 0
        socket_dir = self.bed.credentials_dir / ".cp"
        for sock in socket_dir.iterdir() if socket_dir.is_dir() else []:
            result = subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-host"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            closed += result.returncode == 0
        return closed

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An authenticated MLflow REST call through nginx, from this machine."""
        response = requests.request(
            method,
            f"{self.public_url()}/api/2.0/mlflow/{path}",
            json=body,
            auth=(USER, self.password()),
            verify=str(self.cert()),
            timeout=60,
        )
        response.raise_for_status()
        return response.json()

    # ----- inside the host -------------------------------------------------------------

    def install_tools(self) -> None:
        """wrk (Debian's, the load generator) and the agent, inside the host."""
        if self.host.run(["sh", "-c", "command -v wrk"], check=False).returncode != 0:
            self.host.run(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk"
                " >/dev/null || { apt-get update -q >/dev/null &&"
                " DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
                " --no-install-recommends wrk >/dev/null; }",
                timeout=600,
            )
        self.host.write_file(AGENT_PATH, AGENT_SOURCE.read_text(), mode="0700")

    def nginx_snippet(self, directives: str, site_edits: list[tuple[str, str]]) -> None:
        """http-level nginx directives for a variant (removed when empty) and text replacements
        in the role's site file, then a reload."""
        if directives:
            self.host.write_file(NGINX_SNIPPET, f"# bench variant only\n{directives}\n")
        else:
            self.host.run(["rm", "-f", NGINX_SNIPPET])
        if site_edits:
            site = self.host.read_file(NGINX_SITE)
            for old, new in site_edits:
                if old not in site:
                    raise BenchError(f"variant: {old!r} not found in {NGINX_SITE}")
                site = site.replace(old, new)
            self.host.write_file(NGINX_SITE, site)
        self.host.run("nginx -t -q && systemctl reload nginx && sleep 1")

    def agent(self, command: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run the agent inside the host; its JSON answer."""
        result = self.host.run(
            ["python3", AGENT_PATH, command],
            input_text=json.dumps(config),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"agent {command} failed: {result.stderr[-2000:]}{result.stdout}")
        return json.loads(result.stdout)

    def versions(self) -> dict[str, str]:
        """Versions of what runs in the host (for the results)."""
        script = (
            "nginx -v 2>&1 | cut -d/ -f2; "
            "/opt/mlflow/venv/bin/python -c 'import mlflow,sys; print(mlflow.__version__);"
            " print(sys.version.split()[0])'; "
            "wrk -v 2>&1 | head -1 | cut -d' ' -f2; "
            "openssl version | cut -d' ' -f2; "
            ". /etc/os-release; echo $PRETTY_NAME"
        )
        lines = self.host.run(script).stdout.splitlines()
        names = ["nginx", "mlflow", "python (server)", "wrk", "openssl", "os"]
        return dict(zip(names, (line.strip() for line in lines), strict=False))
