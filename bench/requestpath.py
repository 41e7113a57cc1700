"""Goal 1: authenticated requests through nginx versus the same requests straight to MLflow.

Both cases run the same load generator INSIDE the host, with the same concurrency and
keep-alive: `direct` = http://127.0.0.1:5000 (MLflow itself), `nginx` = https://127.0.0.1
with the public name as Host header and basic auth (TLS, password check, proxy). Small API
calls use wrk (C, one event loop) with a Lua script; 10 MB artifacts use Python keep-alive
clients. Rounds alternate direct/nginx/nginx/direct... so drift on a shared machine hits both.
"""

from __future__ import annotations

import base64
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.bed import USER, Bench
from bench.report import Report, goal

RATIO_GOAL = 0.90
RUNS_PER_ENDPOINT = 16  # log-metric/log-batch spread over runs, as separate training jobs do


@dataclass(frozen=True)
class Endpoint:
    name: str
    tool: str  # "wrk" or "artifacts"
    mode: str  # wrk: get / metric / batch; artifacts: upload / download
    path: str = ""


@dataclass(frozen=True)
class Settings:
    """How hard and how long: the same for both targets."""

    connections: int = 8
    wrk_threads: int = 1
    seconds: float = 8.0
    rounds: int = 4
    warmup_seconds: float = 3.0
    artifact_clients: int = 4
    artifact_mb: int = 10
    artifact_seconds: float = 15.0
    artifact_max_ops: int = 40  # per client and round
    only: str = ""  # comma-separated words: run only the endpoints whose name contains one


def endpoints(experiment_id: str) -> list[Endpoint]:
    return [
        Endpoint("GET experiments/get", "wrk", "get",
                 f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"),
        Endpoint("POST runs/log-metric", "wrk", "metric", "/api/2.0/mlflow/runs/log-metric"),
        Endpoint("POST runs/log-batch (100 metrics)", "wrk", "batch",
                 "/api/2.0/mlflow/runs/log-batch"),
        Endpoint("PUT artifact 10 MB (upload)", "artifacts", "upload"),
        Endpoint("GET artifact 10 MB (download)", "artifacts", "download"),
    ]  # fmt: skip


def targets(bench: Bench) -> dict[str, dict[str, Any]]:
    token = base64.b64encode(f"{USER}:{bench.password()}".encode()).decode()
    return {
        "direct": {"url": "http://127.0.0.1:5000", "headers": {}},
        "nginx": {
            "url": "https://127.0.0.1",
            "headers": {"Host": bench.host.dns_name, "Authorization": f"Basic {token}"},
        },
    }


def prepare(bench: Bench) -> tuple[str, list[str]]:
    """An experiment and the runs the write benchmarks log to."""
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = bench.api("POST", "experiments/create", {"name": name})["experiment_id"]
    runs = [
        bench.api("POST", "runs/create", {"experiment_id": experiment_id})["run"]["info"]["run_id"]
        for _ in range(RUNS_PER_ENDPOINT)
    ]
    return experiment_id, runs


def one_load(
    bench: Bench,
    endpoint: Endpoint,
    target: dict[str, Any],
    settings: Settings,
    seconds: float,
    context: dict[str, Any],
) -> dict[str, Any]:
    """One measured (or warm-up) load of `seconds` against one target."""
    if endpoint.tool == "wrk":
        config = {
            "url": target["url"] + endpoint.path,
            "headers": target["headers"],
            "mode": endpoint.mode,
            "runs": context["runs"],
            "tag": f"{endpoint.mode}_{context['tag']}",
            "threads": settings.wrk_threads,
            "connections": settings.connections,
            "duration": seconds,
        }
        context["tag"] += 1  # every load logs new metric keys: never a duplicate
        return bench.agent("wrk", config, timeout=seconds + 120)
    config = {
        "url": target["url"],
        "headers": target["headers"],
        "mode": endpoint.mode,
        "size_mb": settings.artifact_mb,
        "clients": settings.artifact_clients,
        "duration": seconds,
        "max_ops": settings.artifact_max_ops,
        "prefix": f"bench/{context['experiment_id']}",
        "cadata": context["cadata"],
    }
    return bench.agent("artifacts", config, timeout=seconds + 600)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def aggregate(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Median throughput and latencies over the rounds, CPU per request, errors."""
    requests = sum(r["load"]["requests"] for r in loads) or 1

    def cpu_ms(key: str) -> float:
        return sum(r["cpu"].get(key, 0.0) for r in loads) / requests * 1000

    wall = sum(r["cpu"]["wall_s"] for r in loads) or 1.0
    return {
        "rps": _median([r["load"]["rps"] for r in loads]),
        "rps_rounds": [r["load"]["rps"] for r in loads],
        "p50_ms": _median([r["load"]["p50_us"] / 1000 for r in loads]),
        "p99_ms": _median([r["load"]["p99_us"] / 1000 for r in loads]),
        "mb_per_s": _median([r["load"].get("mb_per_s", 0.0) for r in loads]),
        "requests": sum(r["load"]["requests"] for r in loads),
        "errors": sum(r["load"]["errors"] for r in loads),
        "nginx_cpu_ms_per_request": cpu_ms("nginx_cpu_s"),
        "mlflow_cpu_ms_per_request": cpu_ms("mlflow_cpu_s"),
        "client_cpu_share": sum(r["cpu"]["client_cpu_s"] for r in loads) / wall,
        "machine_busy_share": _median([r["cpu"]["machine_busy_share"] for r in loads]),
        "connections_per_worker": [
            sorted(r["memory_peak"].get("connections_per_worker", {}).values(), reverse=True)
            for r in loads
        ],
    }


def _describe(name: str, figures: dict[str, Any]) -> str:
    extra = f", {figures['mb_per_s']:.0f} MB/s" if figures["mb_per_s"] else ""
    return (
        f"{name} {figures['rps']:.1f} req/s{extra} (p50 {figures['p50_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms)"
    )


def bench_endpoint(
    bench: Bench, endpoint: Endpoint, settings: Settings, context: dict[str, Any]
) -> dict[str, Any]:
    """Warm up both targets, then alternate measured rounds; aggregate per target."""
    is_wrk = endpoint.tool == "wrk"
    seconds = settings.seconds if is_wrk else settings.artifact_seconds
    chosen = context["targets"]
    for target in chosen.values():
        one_load(bench, endpoint, target, settings, settings.warmup_seconds, context)
    loads: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for round_number in range(settings.rounds):
        order = ["direct", "nginx"] if round_number % 2 == 0 else ["nginx", "direct"]
        for name in order:
            loads[name].append(one_load(bench, endpoint, chosen[name], settings, seconds, context))
    context["all_loads"].extend(load for runs in loads.values() for load in runs)
    return {name: aggregate(runs) for name, runs in loads.items()}


def run_request_path(
    bench: Bench, report: Report, settings: Settings, label: str = "defaults"
) -> dict[str, Any]:
    """Every endpoint, direct versus nginx; one summary line each. Returns the raw loads."""
    experiment_id, runs = prepare(bench)
    context: dict[str, Any] = {
        "targets": targets(bench),
        "runs": runs,
        "experiment_id": experiment_id,
        "tag": 0,
        "cadata": bench.cert().read_text(),
        "all_loads": [],
    }
    results = {}
    words = [w.strip().lower() for w in settings.only.split(",") if w.strip()]
    chosen = [
        e for e in endpoints(experiment_id) if not words or any(w in e.name.lower() for w in words)
    ]
    for endpoint in chosen:
        figures = bench_endpoint(bench, endpoint, settings, context)
        direct, nginx = figures["direct"], figures["nginx"]
        ratio = nginx["rps"] / direct["rps"] if direct["rps"] else 0.0
        errors = direct["errors"] + nginx["errors"]
        met = ratio >= RATIO_GOAL and errors == 0
        concurrency = (
            f"{settings.connections} connections"
            if endpoint.tool == "wrk"
            else f"{settings.artifact_clients} clients"
        )
        report.summary(
            f"request [{label}] {endpoint.name}, {concurrency}: "
            f"{_describe('direct', direct)} | {_describe('nginx', nginx)} | ratio {ratio:.3f} "
            f"({goal(met, f'>= {RATIO_GOAL}')}); nginx CPU "
            f"{nginx['nginx_cpu_ms_per_request']:.2f} ms/req, MLflow CPU "
            f"{direct['mlflow_cpu_ms_per_request']:.1f}/{nginx['mlflow_cpu_ms_per_request']:.1f}"
            f" ms/req, client CPU {direct['client_cpu_share']:.0%}/"
            f"{nginx['client_cpu_share']:.0%}, machine busy {direct['machine_busy_share']:.0%}/"
            f"{nginx['machine_busy_share']:.0%}, errors {errors}"
        )
        report.goal(f"1 request path [{label}]: {endpoint.name}", met)
        results[endpoint.name] = {"ratio": ratio, **figures}
    report.data.setdefault("request_path", {})[label] = {
        "settings": settings.__dict__,
        "endpoints": results,
    }
    return {"loads": context["all_loads"]}
