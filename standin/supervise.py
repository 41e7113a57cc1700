"""Keeps one test host's systemd-nspawn running across reboots (run as a standalone script).

systemd-nspawn exits with status 133 when the container reboots (systemd-nspawn@.service
restarts it on that status); nothing else would here, so this process does. It first moves
itself into the host's own cgroup directories, so nspawn and everything in the host live
there and can be found (and killed) by cgroup on teardown. SIGTERM stops the host cleanly:
it is passed on to nspawn (which powers the container off) and no restart follows.

Usage: supervise.py --ip IP --bridge BR --cgroup DIR [--cgroup DIR...] -- NSPAWN ARGV...
Stdlib only: started with the harness's Python but without importing the harness.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_STATUS = 133


def join_cgroups(dirs: list[str]) -> None:
    for directory in dirs:
        Path(directory).mkdir(parents=True, exist_ok=True)
        Path(directory, "cgroup.procs").write_text(f"{os.getpid()}\n")


def log(message: str) -> None:
    print(f"[supervise {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", required=True)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    join_cgroups(args.cgroup)

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        # A restarted host keeps its fixed MAC; still drop any stale neighbour entry.
        subprocess.run(["ip", "neigh", "flush", "to", args.ip, "dev", args.bridge], check=False)
        log(f"starting: {' '.join(argv)}")
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if stopping:  # SIGTERM came while nspawn was being started
            child.send_signal(signal.SIGTERM)
        status = child.wait()
        log(f"nspawn exited with status {status}")
        if status != REBOOT_STATUS or stopping:
            return 0 if stopping else status
        log("host rebooted: starting it again")


if __name__ == "__main__":
    sys.exit(main())
