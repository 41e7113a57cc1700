"""Goal 3: converge time of the real playbook on a bare host, a no-op rerun and a rotation.

Package work (apt and pip tasks: download plus install) is timed on its own through the
bench_timer callback. The no-op rerun is measured twice: right after the cold run (the SSH
master connection of ControlPersist is still open) and after closing that connection (what an
operator gets on a later day, while the fact cache is valid).
"""

from __future__ import annotations

from typing import Any

from bench.bed import USER, Bench, TimedRun
from bench.report import Report, goal

PACKAGE_ACTIONS = {"apt", "ansible.builtin.apt", "pip", "ansible.builtin.pip"}
NOOP_SHARE_GOAL = 0.15
NOOP_SECONDS_GOAL = 30.0
ROTATION_SECONDS_GOAL = 30.0


def package_seconds(run: TimedRun) -> float:
    return sum(t["seconds"] for t in run.tasks if t["action"] in PACKAGE_ACTIONS)


def slowest(run: TimedRun, count: int = 6) -> list[dict[str, Any]]:
    ordered = sorted(run.tasks, key=lambda t: t["seconds"], reverse=True)
    # Ansible already prefixes a role's task names with "<role> : ".
    return [{"task": t["name"], "seconds": t["seconds"]} for t in ordered[:count]]


def _describe(run: TimedRun) -> dict[str, Any]:
    return {
        "seconds": run.seconds,
        "package_seconds": package_seconds(run),
        "tasks": len(run.tasks),
        "changed": run.changed(),
        "slowest": slowest(run),
    }


def run_converge(bench: Bench, report: Report, extra_args: list[str]) -> None:
    """Cold converge, two no-op reruns and a rotation, on the bed's bare host."""
    print("[bench] converge: cold run on a bare host (a few minutes)...", flush=True)
    cold = bench.playbook("cold", extra_args)
    warm = bench.playbook("noop", extra_args)
    closed = bench.close_ssh_masters()
    fresh_ssh = bench.playbook("noop-new-ssh", extra_args)
    (bench.stack_dir / "users" / f"{USER}.password").unlink()  # what `make rotate USER=team` does
    rotation = bench.playbook("rotation", extra_args)

    runs = {"cold": cold, "noop": warm, "noop_new_ssh": fresh_ssh, "rotation": rotation}
    results = {name: _describe(run) for name, run in runs.items()}
    results["ssh_masters_closed"] = closed
    report.data["converge"] = results

    packages = package_seconds(cold)
    report.summary(
        f"converge cold: {cold.seconds:.0f} s, of which package tasks (apt + pip: download and "
        f"install) {packages:.0f} s and everything else {cold.seconds - packages:.0f} s"
    )
    for name, run in (("no-op rerun", warm), ("no-op rerun, new SSH connection", fresh_ssh)):
        share = run.seconds / cold.seconds
        met = share <= NOOP_SHARE_GOAL and run.seconds < NOOP_SECONDS_GOAL
        report.summary(
            f"converge {name}: {run.seconds:.1f} s, {run.changed()} changed, ratio to cold "
            f"{share:.3f} ({goal(met, f'<= {NOOP_SHARE_GOAL} and < {NOOP_SECONDS_GOAL:.0f} s')})"
        )
        report.goal("3 converge: " + name, met and run.changed() == 0)
    rotation_met = rotation.seconds < ROTATION_SECONDS_GOAL and rotation.changed() >= 1
    report.summary(
        f"converge rotation (make rotate USER={USER}): {rotation.seconds:.1f} s, "
        f"{rotation.changed()} changed, ratio to cold {rotation.seconds / cold.seconds:.3f} "
        f"({goal(rotation_met, f'< {ROTATION_SECONDS_GOAL:.0f} s')})"
    )
    report.goal("3 converge: rotation", rotation_met)
