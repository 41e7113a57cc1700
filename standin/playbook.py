"""Run the real `make configure` playbook against an outputs file, and read its PLAY RECAP.

Used by the end-to-end tests, `make demo` and the benchmarks, so all of them exercise exactly what
a user runs: ansible-playbook site.yml from ansible/, through the pulumi_stack inventory plugin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent

_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


@dataclass
class PlaybookRun:
    """What one ansible-playbook run did: exit code, output, per-host recap counts, wall time."""

    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, int]:
        return {host: counts.get("changed", 0) for host, counts in self.recap.items()}

    def check(self) -> PlaybookRun:
        """Fail with the playbook's output tail when the run did not succeed."""
        if self.returncode != 0:
            tail = "\n".join(self.output.splitlines()[-60:])
            raise AssertionError(f"ansible-playbook exited {self.returncode}:\n{tail}")
        return self


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counters (ok, changed, failed, ...) from the PLAY RECAP block."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = _RECAP_LINE.match(line.strip()) if in_recap else None
        if match:
            counts = dict(pair.split("=") for pair in match["counts"].split())
            recap[match["host"]] = {key: int(value) for key, value in counts.items()}
    return recap


def playbook_env(outputs_file: Path, credentials_dir: Path, stack: str) -> dict[str, str]:
    """The environment `make configure` would have, pointed at a saved outputs file."""
    env = dict(os.environ)
    env.update(
        STACK=stack,
        MLFLOW_AWS_OUTPUTS_FILE=str(outputs_file),
        MLFLOW_AWS_CREDENTIALS_DIR=str(credentials_dir),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        # Test beds reuse host names and addresses: facts and SSH master connections are kept
        # per credentials dir, so nothing from an earlier bed is ever reused.
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(credentials_dir / ".facts"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(credentials_dir / ".cp"),
    )
    return env


def run_playbook(
    outputs_file: Path,
    credentials_dir: Path,
    stack: str = "e2e",
    extra_args: list[str] | None = None,
    echo: bool = True,
) -> PlaybookRun:
    """Run ansible/site.yml as `make configure` does; stream output when echo is set."""
    command = [str(VENV_BIN / "ansible-playbook"), "site.yml", *(extra_args or [])]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ANSIBLE_DIR,
        env=playbook_env(outputs_file, credentials_dir, stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    returncode = process.wait()
    output = "".join(lines)
    return PlaybookRun(returncode, output, time.monotonic() - started, parse_recap(output))
