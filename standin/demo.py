"""`make demo` / `make demo-down`: the whole stack on one local test host, no AWS account needed.

A Debian 13 host booted with systemd-nspawn stands in for the EC2 instance, PostgreSQL 17 for RDS
and moto for S3; the real playbook configures it exactly as `make configure` would.
Needs Linux and root (network namespaces, mounts).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from standin import HarnessError, Testbed
from standin.playbook import run_playbook
from standin.slot import from_env
from standin.util import REPO_ROOT

STACK = "demo"
STATE_DIR = REPO_ROOT / ".cache" / "demo"
CREDENTIALS_DIR = REPO_ROOT / ".credentials"


def state_dir() -> Path:
    """.cache/demo, or .cache/demo<N> in slot N (MLFLOW_AWS_TESTBED_SLOT)."""
    return from_env().with_suffix(STATE_DIR)


def credentials_lines(outputs_file: os.PathLike[str]) -> str:
    """The export lines `make credentials` prints, for the demo stack."""
    env = dict(os.environ, MLFLOW_AWS_CREDENTIALS_DIR=str(CREDENTIALS_DIR))
    command = [sys.executable, "-m", "inventory_plugin.credentials", "--stack", STACK]
    command += ["--outputs-file", str(outputs_file)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def up() -> int:
    bed = Testbed(state_dir())
    print(
        ">> starting a Debian 13 test host, PostgreSQL 17 and an S3-compatible endpoint", flush=True
    )
    bed.up(1)
    print(">> configuring it with the real playbook (a cold run takes a few minutes)", flush=True)
    run_playbook(bed.outputs_file, CREDENTIALS_DIR, STACK).check()
    print("\nThe demo server is up. Point an MLflow client at it:\n")
    print(credentials_lines(bed.outputs_file))
    print("Open the URL in a browser (trust the certificate above), or run an example:")
    print(
        f"  STACK={STACK} MLFLOW_AWS_OUTPUTS_FILE={bed.outputs_file}"
        " make example NAME=iris_random_forest"
    )
    print("Check it from outside, as your users reach it:")
    print(f"  STACK={STACK} MLFLOW_AWS_OUTPUTS_FILE={bed.outputs_file} make verify")
    print("`make demo-down` removes the host, the database and the bucket.")
    return 0


def down() -> int:
    Testbed(state_dir()).down()
    demo_credentials = CREDENTIALS_DIR / STACK
    if demo_credentials.exists():
        subprocess.run(["rm", "-rf", "--", str(demo_credentials)], check=True)
    print(">> demo removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "make demo needs root: it boots a local test host (run it with sudo)", file=sys.stderr
        )
        return 2
    try:
        return up() if args.action == "up" else down()
    except (HarnessError, AssertionError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
