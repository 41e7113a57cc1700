"""Markdown tables from a results JSON: `python -m bench.render bench/out/results-<time>.json`.

`make bench` writes the .md beside the .json; bench/RESULTS.md quotes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _task_name(name: str) -> str:
    """ "role : role : task" (older results files) -> "role : task"."""
    parts = name.split(" : ")
    return " : ".join(parts[1:]) if len(parts) > 2 and parts[0] == parts[1] else name


def converge(doc: dict[str, Any]) -> str:
    runs = doc.get("converge")
    if not runs:
        return ""
    cold = runs["cold"]["seconds"]
    names = {"cold": "cold (bare host)", "noop": "no-op rerun",
             "noop_new_ssh": "no-op rerun, new SSH connection",
             "rotation": "rotation (`make rotate USER=team`)"}  # fmt: skip
    rows = [
        [label, f"{runs[key]['seconds']:.1f}", f"{runs[key]['package_seconds']:.1f}",
         f"{runs[key]['seconds'] / cold:.3f}", runs[key]["changed"], runs[key]["tasks"]]
        for key, label in names.items()
    ]  # fmt: skip
    slow = [[_task_name(t["task"]), f"{t['seconds']:.1f}"] for t in runs["cold"]["slowest"]]
    return (
        _table(["run", "seconds", "apt + pip tasks (s)", "share of cold", "changed", "tasks"], rows)
        + "\nSlowest tasks of the cold run:\n\n"
        + _table(["task", "seconds"], slow)
    )


def request_path(doc: dict[str, Any]) -> str:
    out = []
    for label, block in doc.get("request_path", {}).items():
        rows = []
        for name, figures in block["endpoints"].items():
            direct, nginx = figures["direct"], figures["nginx"]
            rows.append([
                name, f"{direct['rps']:.1f}", f"{nginx['rps']:.1f}", f"**{figures['ratio']:.3f}**",
                f"{direct['p50_ms']:.0f} / {direct['p99_ms']:.0f}",
                f"{nginx['p50_ms']:.0f} / {nginx['p99_ms']:.0f}",
                f"{nginx['nginx_cpu_ms_per_request']:.2f}",
                f"{direct['mlflow_cpu_ms_per_request']:.1f} / "
                f"{nginx['mlflow_cpu_ms_per_request']:.1f}",
                f"{direct['client_cpu_share']:.0%} / {nginx['client_cpu_share']:.0%}",
                f"{direct['machine_busy_share']:.0%} / {nginx['machine_busy_share']:.0%}",
                direct["errors"] + nginx["errors"],
            ])  # fmt: skip
        header = ["request", "direct req/s", "nginx req/s", "ratio", "direct p50 / p99 ms",
                  "nginx p50 / p99 ms", "nginx CPU ms/req", "MLflow CPU ms/req (d / n)",
                  "client CPU (d / n)", "machine busy (d / n)", "errors"]  # fmt: skip
        out.append(f"**{label}**\n\n" + _table(header, rows))
    return "\n".join(out)


def _expected_mib(sizes: dict[str, float], workers: int) -> float:
    return sizes["base_mib"] + workers * sizes["per_worker_mib"] + sizes["nginx_mib"]


def memory(doc: dict[str, Any]) -> str:
    mem = doc.get("memory")
    if not mem:
        return ""
    idle = {p["pid"]: p for p in mem["idle"]["processes"]}
    rows = []
    for proc in sorted(mem["peak"]["processes"], key=lambda p: (p["group"], p["label"])):
        before = idle.get(proc["pid"], {"rss_mib": 0.0, "pss_mib": 0.0})
        rows.append([proc["label"], proc["pid"], f"{before['rss_mib']:.0f}",
                     f"{before['pss_mib']:.0f}", f"{proc['rss_mib']:.0f}",
                     f"{proc['pss_mib']:.0f}"])  # fmt: skip
    for state, sample in (("idle", mem["idle"]), ("peak", mem["peak"])):
        totals = sample["totals"]
        rss = sum(totals.get(g, {}).get("rss_mib", 0.0) for g in ("mlflow", "nginx"))
        pss = sum(totals.get(g, {}).get("pss_mib", 0.0) for g in ("mlflow", "nginx"))
        figures = [f"**{rss:.0f}**", f"**{pss:.0f}**"]
        blank = ["", ""]
        rows.append([f"**MLflow + nginx, {state}**", "",
                     *(figures + blank if state == "idle" else blank + figures)])  # fmt: skip
    table = _table(["process", "pid", "idle RSS MiB", "idle PSS MiB", "peak RSS MiB",
                    "peak PSS MiB"], rows)  # fmt: skip
    sizes = mem["sizes"]
    workers = [
        [r["type"], r["vcpus"], r["gib"], r["memtotal_mb"], r["workers_measured"],
         r["workers_filter"], "yes" if r["match"] else "**no**",
         f"{_expected_mib(sizes, r['workers_filter']):.0f}",
         f"{r['headroom_with_filter_workers']:.0%}"]
        for r in mem["table"]
    ]  # fmt: skip
    return (
        table + f"\nMeasured sizes (peak RSS): base {sizes['base_mib']:.0f} MiB, "
        f"{sizes['per_worker_mib']:.0f} MiB per worker, nginx {sizes['nginx_mib']:.0f} MiB; "
        f"the filter assumes {mem['filter_constants']['base_mb']} + "
        f"{mem['filter_constants']['per_worker_mb']} ({mem.get('bed_workers', '')}).\n\n"
        + _table(
            [
                "instance",
                "vCPUs",
                "GiB",
                "memtotal_mb",
                "workers (measured sizes)",
                "workers (role's filter)",
                "match",
                "MLflow + nginx RSS MiB",
                "headroom",
            ],
            workers,
        )
    )


def workload(doc: dict[str, Any]) -> str:
    rows = []
    for label, patterns in doc.get("workload", {}).items():
        if not isinstance(patterns, dict) or "wall_s" in patterns:
            continue  # an older results file
        for mode, result in patterns.items():
            rows.append([label, mode, f"{result['wall_s']:.1f}",
                         f"{result['slowest_metrics_s']:.2f}",
                         f"{result['slowest_artifacts_s']:.2f}", result["errors"]])  # fmt: skip
    if not rows:
        return ""
    return _table(["settings", "pattern", "wall s (4 clients)", "params + metrics s (slowest)",
                   "artifacts s (slowest)", "errors"], rows)  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items())
    machine = ", ".join(f"{k}: {v}" for k, v in doc.get("machine", {}).items())
    parts = [
        f"Date: {doc['date']}; wall time {doc['wall_seconds']:.0f} s; command: `{doc['command']}`",
        f"Machine: {machine}",
        f"Versions: {versions}; source: {doc.get('source', {})}",
        "Summary lines:\n\n```\n" + "\n".join(doc["summary"]) + "\n```",
        "### Converge\n\n" + converge(doc),
        "### Request path\n\n" + request_path(doc),
        "### Memory\n\n" + memory(doc),
        "### Client workload\n\n" + workload(doc),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.render RESULTS.json", file=sys.stderr)
        return 2
    path = Path(argv[1])
    target = path.with_suffix(".md")
    target.write_text(render(json.loads(path.read_text())))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
