"""Goal 4: the tutorial's workload from 4 concurrent MLflow clients, through nginx.

Each client (its own process, the real MLflow client from this machine, as a training job
would) creates a run, logs 5 parameters, a 1000-step metric history and 2 artifacts (1 KB and
5 MB), ends the run and reads the history back. Three ways: one call per value (log_param and
log_metric in a loop), batched (log_batch), and one call per value with MLflow's asynchronous
logging (synchronous=False: queued, sent in batches). No retries, so every failure counts.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bed import USER, Bench
from bench.report import Report, goal

CLIENTS = 4
STEPS = 1000
PARAMS = {"learning_rate": "0.01", "n_estimators": "100", "max_depth": "5",
          "optimizer": "adam", "batch_size": "64"}  # fmt: skip
MODEL_MB = 5


def _import_mlflow() -> None:
    import mlflow  # noqa: F401 - paid before the clock starts, in every worker process


def _ready(_index: int) -> None:
    time.sleep(0.5)


def client_workload(mode: str, experiment_id: str, index: int, files: list[str]) -> dict[str, Any]:
    """One client's run; phase timings and any errors (never raises)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    timings: dict[str, float] = {}
    errors: list[str] = []
    started = time.monotonic()
    try:
        run_id = client.create_run(experiment_id, run_name=f"{mode}-{index}").info.run_id
        now = int(time.time() * 1000)
        history = [Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(STEPS)]
        mark = time.monotonic()
        if mode == "per-call":
            for key, value in PARAMS.items():
                client.log_param(run_id, key, value)
            for metric in history:
                client.log_metric(run_id, metric.key, metric.value, metric.timestamp, metric.step)
        elif mode == "async":
            # MLflow's async logging queues each call and sends them in batches on a thread.
            pending = [client.log_param(run_id, k, v, synchronous=False) for k, v in PARAMS.items()]
            pending += [
                client.log_metric(run_id, m.key, m.value, m.timestamp, m.step, synchronous=False)
                for m in history
            ]
            for operation in pending:
                operation.wait()
        else:
            client.log_batch(
                run_id, metrics=history, params=[Param(k, v) for k, v in PARAMS.items()]
            )
        timings["params_and_metrics_s"] = time.monotonic() - mark
        mark = time.monotonic()
        for path in files:
            client.log_artifact(run_id, path)
        timings["artifacts_s"] = time.monotonic() - mark
        client.set_terminated(run_id)
        logged = len(client.get_metric_history(run_id, "loss"))
        if logged != STEPS:
            errors.append(f"{logged} of {STEPS} metric steps stored")
    except Exception as error:  # every failure is a result here, not a crash
        errors.append(repr(error)[:300])
    timings["total_s"] = time.monotonic() - started
    return {"timings": timings, "errors": errors}


def _make_files(directory: Path) -> list[str]:
    config = directory / "config.json"
    config.write_text('{"model": "demo", "padding": "' + "x" * 990 + '"}')
    model = directory / "model.bin"
    model.write_bytes(os.urandom(MODEL_MB * 1024 * 1024))
    return [str(config), str(model)]


def run_pattern(pool: Any, mode: str, experiment_id: str, files: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    results = pool.starmap(
        client_workload, [(mode, experiment_id, i, files) for i in range(CLIENTS)], chunksize=1
    )
    wall = time.monotonic() - started
    return {
        "wall_s": wall,
        "clients": results,
        "errors": sum(len(r["errors"]) for r in results),
        "slowest_metrics_s": max(r["timings"].get("params_and_metrics_s", 0) for r in results),
        "slowest_artifacts_s": max(r["timings"].get("artifacts_s", 0) for r in results),
    }


def run_workload(bench: Bench, report: Report, label: str = "defaults") -> None:
    experiment = f"bench-workload-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = bench.api("POST", "experiments/create", {"name": experiment})["experiment_id"]
    os.environ.update(
        MLFLOW_TRACKING_URI=bench.public_url(),
        MLFLOW_TRACKING_USERNAME=USER,
        MLFLOW_TRACKING_PASSWORD=bench.password(),
        MLFLOW_TRACKING_SERVER_CERT_PATH=str(bench.cert()),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    with tempfile.TemporaryDirectory(prefix="bench-workload-") as tmp:
        files = _make_files(Path(tmp))
        context = multiprocessing.get_context("spawn")
        with context.Pool(CLIENTS, initializer=_import_mlflow) as pool:
            pool.map(_ready, range(CLIENTS), chunksize=1)
            patterns = {
                mode: run_pattern(pool, mode, experiment_id, files)
                for mode in ("per-call", "log_batch", "async")
            }
    per_call, batch, queued = patterns["per-call"], patterns["log_batch"], patterns["async"]
    errors = per_call["errors"] + batch["errors"] + queued["errors"]
    report.data.setdefault("workload", {})[label] = patterns
    metrics_ratio = per_call["slowest_metrics_s"] / max(batch["slowest_metrics_s"], 1e-3)
    report.summary(
        f"client workload [{label}], {CLIENTS} concurrent clients ({len(PARAMS)} params, "
        f"{STEPS}-step metric, 1 KB + {MODEL_MB} MB artifacts): one call per value "
        f"{per_call['wall_s']:.1f} s wall (metrics {per_call['slowest_metrics_s']:.1f} s) | "
        f"log_batch {batch['wall_s']:.1f} s wall (metrics {batch['slowest_metrics_s']:.2f} s) | "
        f"ratio {per_call['wall_s'] / batch['wall_s']:.1f}x faster with log_batch "
        f"(metrics alone {metrics_ratio:.0f}x); "
        f"async (synchronous=False) {queued['wall_s']:.1f} s wall; errors {per_call['errors']} + "
        f"{batch['errors']} + {queued['errors']} ({goal(errors == 0, 'zero errors')})"
    )
    report.goal(f"4 client workload [{label}]: zero errors", errors == 0)
