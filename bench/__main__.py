"""`make bench`: request path, memory, converge time and client workload on a test host.

Brings up its own one-host test bed (state dir .cache/bench-testhosts), converges it with the
real playbook (timed: goal 3), measures the request path direct vs nginx (goal 1) and memory
while doing so (goal 2), runs the client workload (goal 4), prints one summary line per
benchmark, writes every figure to bench/out/results-<time>.json and takes the bed down.
Needs Linux and root, like the end-to-end tests.

Variants measure a role setting without changing the roles: `--variant NAME='-e k=v ...'`
reconfigures the host with those extra variables after the default run and measures the
request path again (e.g. --variant rounds1000='-e nginx_basic_auth_hash_rounds=1000').
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from importlib import metadata

from bench.bed import Bench, BenchError, wait_until_free
from bench.converge import run_converge
from bench.memory import idle_sample, run_memory
from bench.report import Report
from bench.requestpath import Settings, run_request_path
from bench.workload import run_workload


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use the bench bed left up by --keep (skips the converge goal)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the bed up at the end")
    parser.add_argument(
        "--wait-minutes",
        type=float,
        default=0,
        help="wait this long for another test bed to go away (default: fail)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="seconds per round (wrk)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--skip-workload", action="store_true", help="skip goal 4")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME='-e k=v'",
                        help="after the defaults, reconfigure with these ansible-playbook "
                        "arguments and measure the request path again (repeatable)")  # fmt: skip
    return parser.parse_args(argv)


def _versions(bench: Bench) -> dict[str, str]:
    found = bench.versions()
    for package in ("ansible-core", "mlflow-skinny", "requests"):
        found[f"{package} (operator machine)"] = metadata.version(package)
    return found


def run(args: argparse.Namespace, report: Report) -> None:
    bench = Bench()
    try:
        if args.reuse:
            bench.reuse()
        else:
            seconds = bench.up_fresh()
            report.data["bed_up_seconds"] = seconds
            run_converge(bench, report, [])
        bench.install_tools()
        report.data["versions"] = _versions(bench)
        settings = Settings(connections=args.connections, seconds=args.seconds, rounds=args.rounds)
        idle = idle_sample(bench)
        loads = run_request_path(bench, report, settings)["loads"]
        run_memory(bench, report, idle, loads)
        if not args.skip_workload:
            run_workload(bench, report)
        for variant in args.variant:
            label, _, extra = variant.partition("=")
            print(f"[bench] variant {label}: reconfiguring with {extra}", flush=True)
            bench.playbook(f"variant-{label}", shlex.split(extra))
            run_request_path(bench, report, settings, label=label)
    finally:
        path = report.write()
        print(f"[bench] figures: {path}", flush=True)
        if not args.keep:
            bench.down()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("make bench needs root: it boots a local test host", file=sys.stderr)
        return 2
    given = sys.argv[1:] if argv is None else argv
    report = Report(command="make bench" + (f" ARGS='{shlex.join(given)}'" if given else ""))
    started = time.monotonic()
    try:
        wait_until_free(args.wait_minutes * 60)
        run(args, report)
    except BenchError as error:
        print(f"[bench] error: {error}", file=sys.stderr)
        return 1
    met = sum(report.goals.values())
    print(f"[bench] done in {time.monotonic() - started:.0f} s; goals met {met} of "
          f"{len(report.goals)}: " + ", ".join(
              f"{name} {'met' if ok else 'NOT met'}" for name, ok in report.goals.items()),
          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
