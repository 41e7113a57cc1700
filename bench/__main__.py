"""`make bench`: request path, memory, converge time and client workload on a test host.

Brings up its own one-host test bed (state dir .cache/bench-testhosts; test bed slot 2 unless
--slot says otherwise, beside the tests' beds in slots 0 and 1), converges it with the real
playbook (timed: goal 3), measures the request path direct vs nginx (goal 1) and memory while
doing so (goal 2), runs the client workload (goal 4), prints one summary line per benchmark,
writes every figure to bench/out/results-<time>.json and takes the bed down.
Needs Linux and root, like the end-to-end tests.

Variants measure a setting without changing the roles, after the default run, cumulatively
(each variant keeps the ones before it; repeated names form one variant), and measure the
request path (and the client workload) again:
    --variant NAME='-e k=v ...'            rerun the playbook with these extra variables
    --variant NAME='nginx:directive ...;'  add http-level nginx directives (a conf.d file only
                                           the benchmark writes), then reload nginx
    --variant NAME='site:OLD=>NEW'         replace text in the role's site file (kept until the
                                           next playbook run: use it in the last variant)
e.g. --variant limit200='-e nginx_basic_auth_rate_limit=200'
     --variant buffers='nginx:proxy_buffer_size 256k; proxy_buffers 4 256k;'
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from importlib import metadata

from bench.bed import REPO, SLOT, Bench, BenchError
from bench.converge import run_converge
from bench.memory import idle_sample, run_memory
from bench.report import Report
from bench.requestpath import Settings, run_request_path
from bench.workload import run_workload
from standin.util import HarnessError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add(
        "--reuse",
        action="store_true",
        help="use the bench bed left up by --keep (skips the converge goal)",
    )
    add("--keep", action="store_true", help="leave the bed up at the end")
    add(
        "--slot",
        type=int,
        default=SLOT,
        help=f"test bed slot 0..9 (default {SLOT}: beside the tests' slots 0 and 1)",
    )
    add("--seconds", type=float, default=8, help="seconds per measured round (wrk)")
    add("--rounds", type=int, default=4, help="measured rounds per target")
    add("--connections", type=int, default=8, help="concurrent connections (wrk)")
    add(
        "--endpoints",
        default="",
        help="only endpoints whose name contains one of these "
        "comma-separated words (e.g. artifact,log-metric)",
    )
    add("--skip-workload", action="store_true", help="skip the client workload (goal 4)")
    add("--variants-only", action="store_true", help="with --reuse: measure only the variants")
    add(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="see above (repeatable, cumulative)",
    )
    return parser.parse_args(argv)  # fmt: skip


def _versions(bench: Bench) -> dict[str, str]:
    found = bench.versions()
    for package in ("ansible-core", "mlflow-skinny", "requests"):
        found[f"{package} (operator machine)"] = metadata.version(package)
    return found


def _source_state() -> dict[str, str]:
    """Which roles were measured: the commit and whether ansible/ had local changes."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return result.stdout.strip()

    changed = git("status", "--porcelain", "--", "ansible")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "ansible_uncommitted_changes": str(len(changed.splitlines())),
    }


def run_variants(
    bench: Bench, report: Report, settings: Settings, args: argparse.Namespace
) -> None:
    """Each variant on top of the ones before it: playbook extra args and/or nginx directives.

    Consecutive specs with the same name form one variant (measured once, after the last).
    """
    extra_args: list[str] = []
    nginx_lines: list[str] = []
    site_edits: list[tuple[str, str]] = []
    applied: list[str] = []
    specs = [variant.partition("=")[::2] for variant in args.variant]
    for index, (label, spec) in enumerate(specs):
        if spec.startswith("nginx:"):
            nginx_lines.append(spec.removeprefix("nginx:").strip())
        elif spec.startswith("site:"):
            old, _, new = spec.removeprefix("site:").partition("=>")
            site_edits.append((old, new))
        else:
            extra_args += shlex.split(spec)
        applied.append(f"{label}: {spec}")
        if index + 1 < len(specs) and specs[index + 1][0] == label:
            continue
        print(f"[bench] variant {label}: {' + '.join(applied)}", flush=True)
        bench.playbook(f"variant-{label}", extra_args)
        bench.nginx_snippet("\n".join(nginx_lines), site_edits)
        report.data.setdefault("variants", {})[label] = list(applied)
        run_request_path(bench, report, settings, label=label)
        if not args.skip_workload:
            run_workload(bench, report, label=label)


def run(args: argparse.Namespace, report: Report) -> None:
    bench = Bench(slot=args.slot)
    try:
        if args.reuse:
            bench.reuse()
        else:
            report.data["bed_up_seconds"] = bench.up_fresh()
            run_converge(bench, report, [])
        bench.install_tools()
        report.data["versions"] = _versions(bench)
        report.data["source"] = _source_state()
        settings = Settings(
            connections=args.connections,
            seconds=args.seconds,
            rounds=args.rounds,
            only=args.endpoints,
        )
        if not args.variants_only:
            idle = idle_sample(bench)
            loads = run_request_path(bench, report, settings)["loads"]
            run_memory(bench, report, idle, loads)
            if not args.skip_workload:
                run_workload(bench, report)
        run_variants(bench, report, settings, args)
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
        run(args, report)
    except (BenchError, HarnessError) as error:
        print(f"[bench] error: {error}", file=sys.stderr)
        return 1
    met = sum(report.goals.values())
    verdicts = ", ".join(
        f"{name} {'met' if ok else 'NOT met'}" for name, ok in report.goals.items()
    )
    print(
        f"[bench] done in {time.monotonic() - started:.0f} s; goals met {met} of "
        f"{len(report.goals)}: {verdicts}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
