"""Goal 2: memory of MLflow and nginx, idle and under the request-path load; worker-count table.

RSS and PSS per process come from /proc/PID/smaps_rollup inside the host: one sample when idle
(after the converge, before any load), and the peak of the 1-second samples taken during every
load of the request-path benchmark. The default instance type (t3.medium, 4 GiB) must keep at
least 30% free. The worker table recomputes the mlflow role's formula with the measured sizes
and compares it with the role's filter (ansible/filter_plugins/mlflow_aws.py).
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bench.bed import REPO, Bench
from bench.report import Report, goal

DEFAULT_INSTANCE = ("t3.medium", 4, 2)
HEADROOM_GOAL = 0.30
# The kernel reports less than the nominal size as MemTotal (firmware and kernel reservations);
# the role's filter gets ansible_facts.memtotal_mb, so the table uses this share of nominal.
MEMTOTAL_SHARE = 0.95
# (type, GiB, vCPUs): sizes the Pulumi program accepts, from the smallest up.
INSTANCE_TYPES = [
    ("t3.small", 2, 2),
    ("t3.medium", 4, 2),
    ("t3.large", 8, 2),
    ("t3.xlarge", 16, 4),
    ("t3.2xlarge", 32, 8),
    ("c5.xlarge", 8, 4),
    ("c5.2xlarge", 16, 8),
    ("m5.xlarge", 16, 4),
    ("m5.4xlarge", 64, 16),
]


def load_filters() -> ModuleType:
    """The role's filter module, imported from its file (it is not a package)."""
    path = REPO / "ansible" / "filter_plugins" / "mlflow_aws.py"
    spec = importlib.util.spec_from_file_location("mlflow_aws_filters", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idle_sample(bench: Bench, settle_seconds: float = 20) -> dict[str, Any]:
    """Memory with no load: after the service has settled."""
    time.sleep(settle_seconds)
    return bench.agent("procs", {}, timeout=120)


def peaks(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-process and per-group maxima over every load's samples."""
    processes: dict[int, dict[str, Any]] = {}
    groups: dict[str, dict[str, float]] = {}
    for load in loads:
        for proc in load["memory_peak"]["processes"]:
            kept = processes.setdefault(proc["pid"], dict(proc))
            for key in ("rss_mib", "pss_mib"):
                kept[key] = max(kept[key], proc[key])
        for name, total in load["memory_peak"]["totals"].items():
            kept_group = groups.setdefault(name, dict(total))
            for key in ("rss_mib", "pss_mib"):
                kept_group[key] = max(kept_group[key], total[key])
    return {"processes": list(processes.values()), "totals": groups}


def _sum(sample: dict[str, Any], key: str) -> float:
    return sum(sample["totals"].get(g, {}).get(key, 0.0) for g in ("mlflow", "nginx"))


def sizes(peak: dict[str, Any]) -> dict[str, float]:
    """Measured base (non-worker MLflow processes), per-worker and nginx sizes (RSS, MiB)."""
    mlflow = [p for p in peak["processes"] if p["group"] == "mlflow"]
    workers = [p["rss_mib"] for p in mlflow if p["label"] == "uvicorn worker"]
    return {
        "base_mib": sum(p["rss_mib"] for p in mlflow if p["label"] != "uvicorn worker"),
        "per_worker_mib": max(workers, default=0.0),
        "workers": float(len(workers)),
        "nginx_mib": peak["totals"].get("nginx", {}).get("rss_mib", 0.0),
    }


def worker_table(
    measured: dict[str, float], role_filter: Callable[..., int], reserve: float
) -> list[dict[str, Any]]:
    """Workers per instance size: the formula with measured sizes versus the role's filter."""
    rows = []
    for name, gib, vcpus in INSTANCE_TYPES:
        memtotal = int(gib * 1024 * MEMTOTAL_SHARE)
        fitting = math.floor(
            (memtotal * (1 - reserve) - measured["base_mib"]) / measured["per_worker_mib"]
        )
        from_measurement = max(1, min(vcpus, fitting))
        from_filter = role_filter(memtotal, vcpus)
        used = measured["base_mib"] + from_filter * measured["per_worker_mib"]
        used += measured["nginx_mib"]
        rows.append({
            "type": name, "gib": gib, "vcpus": vcpus, "memtotal_mb": memtotal,
            "workers_measured": from_measurement, "workers_filter": from_filter,
            "match": from_measurement == from_filter,
            "headroom_with_filter_workers": 1 - used / (gib * 1024),
        })  # fmt: skip
    return rows


def run_memory(
    bench: Bench, report: Report, idle: dict[str, Any], loads: list[dict[str, Any]]
) -> None:
    peak = peaks(loads)
    name, gib, _vcpus = DEFAULT_INSTANCE
    capacity = gib * 1024
    results: dict[str, Any] = {"idle": idle, "peak": peak}
    for state, sample in (("idle", idle), ("under load", peak)):
        pss, rss = _sum(sample, "pss_mib"), _sum(sample, "rss_mib")
        headroom = 1 - pss / capacity
        met = headroom >= HEADROOM_GOAL
        mlflow_count = sample["totals"].get("mlflow", {}).get("count", 0)
        report.summary(
            f"memory {state}: MLflow ({mlflow_count} processes) + nginx PSS {pss:.0f} MiB "
            f"(RSS {rss:.0f} MiB) of {name}'s {capacity} MiB, headroom {headroom:.0%} / RSS "
            f"{1 - rss / capacity:.0%} ({goal(met, f'>= {HEADROOM_GOAL:.0%}')}); rest of the "
            f"host PSS {sample['totals'].get('other', {}).get('pss_mib', 0.0):.0f} MiB"
        )
        report.goal(f"2 memory {state}", met)

    filters = load_filters()
    measured = sizes(peak)
    table = worker_table(measured, filters.mlflow_workers, filters.RESERVE_RATIO)
    results.update(sizes=measured, table=table, filter_constants={
        "base_mb": filters.BASE_MB, "per_worker_mb": filters.PER_WORKER_MB,
        "reserve_ratio": filters.RESERVE_RATIO})  # fmt: skip
    workers_env = bench.host.run(["grep", "^MLFLOW_WORKERS=", "/etc/mlflow/mlflow.env"])
    results["bed_workers"] = workers_env.stdout.strip()
    mismatches = [row["type"] for row in table if not row["match"]]
    report.summary(
        f"memory sizes (RSS, peak): base {measured['base_mib']:.0f} MiB + "
        f"{measured['per_worker_mib']:.0f} MiB per worker (role's filter assumes "
        f"{filters.BASE_MB} + {filters.PER_WORKER_MB}), nginx {measured['nginx_mib']:.0f} MiB; "
        f"worker table from measurement vs filter: "
        + ", ".join(f"{r['type']} {r['workers_measured']}/{r['workers_filter']}" for r in table)
        + (f"; MISMATCH for {', '.join(mismatches)}" if mismatches else "; all match")
    )
    report.data["memory"] = results
