"""The benchmarks' helper INSIDE a test host: load generation and process accounting there.

Copied into the host and run with the host's own python3 (standard library only), as root:

    python3 agent.py COMMAND < config.json      # prints one JSON object on stdout

Commands:
    procs      one memory sample (RSS, PSS per process) of MLflow, nginx and everything else
    wrk        runs wrk with a generated Lua script (GET / log-metric / log-batch bodies)
    artifacts  uploads or downloads a payload repeatedly from N keep-alive clients (threads)

`wrk` and `artifacts` also sample memory every second while the load runs (peaks per process)
and count the CPU seconds MLflow's and nginx's processes, the client and the whole machine used.
Running the load generator inside the host keeps the comparison fair: the direct case
(http://127.0.0.1:5000) and the nginx case (https://127.0.0.1, Host = the public name) use the
same client, the same concurrency and keep-alive, and neither crosses a network. Secrets (the
Authorization header) arrive on stdin and go to a 0600 file, never to a command line.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL_S = 1.0
JSON_MARK = "BENCHJSON "

# ----- processes and memory ----------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process in the host."""
    parents = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat:
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _tree(root: int, parents: dict[int, int]) -> list[int]:
    """`root` and all its descendants."""
    found, frontier = [root], [root]
    for _ in range(10):  # process trees here are 3 levels deep
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        if not frontier:
            break
        found += frontier
    return found


def _mlflow_main_pid() -> int | None:
    result = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "mlflow"],
        capture_output=True,
        text=True,
        check=False,
    )
    pid = int(result.stdout.strip() or 0)
    return pid or None


def _nginx_main_pid() -> int | None:
    text = _read(Path("/run/nginx.pid")).strip()
    return int(text) if text.isdigit() else None


def _cmdline(pid: int) -> str:
    return _read(PROC / str(pid) / "cmdline").replace("\0", " ").strip()


def _label(pid: int, group: str, main: int | None) -> str:
    command = _cmdline(pid)
    if group == "nginx":
        return "nginx master" if pid == main else "nginx worker"
    if pid == main:
        return "mlflow server (CLI parent)"
    if "spawn_main" in command:
        return "uvicorn worker"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "uvicorn" in command:
        return "uvicorn supervisor"
    return command[:60] or "?"


def groups() -> dict[str, dict[int, str]]:
    """{"mlflow": {pid: label}, "nginx": {...}, "other": {...}} for the host's processes."""
    parents = _parents()
    result: dict[str, dict[int, str]] = {"mlflow": {}, "nginx": {}, "other": {}}
    for group, main in (("mlflow", _mlflow_main_pid()), ("nginx", _nginx_main_pid())):
        if main is not None and main in parents:
            result[group] = {pid: _label(pid, group, main) for pid in _tree(main, parents)}
    taken = set(result["mlflow"]) | set(result["nginx"])
    for pid in parents:
        if pid not in taken and _read(PROC / str(pid) / "smaps_rollup"):  # skips kernel threads
            result["other"][pid] = _cmdline(pid)[:60] or _read(PROC / str(pid) / "comm").strip()
    return result


def memory_kb(pid: int) -> dict[str, int] | None:
    """Rss and Pss (kB) from /proc/PID/smaps_rollup; None when the process is gone."""
    values = {}
    for line in _read(PROC / str(pid) / "smaps_rollup").splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name.lower()] = int(rest.split()[0])
    return values if len(values) == 2 else None


def sample(pids: dict[str, dict[int, str]]) -> dict[str, Any]:
    """One memory sample: per process and per group totals (MiB)."""
    processes, totals = [], {}
    for group, members in pids.items():
        rss = pss = 0
        for pid, label in members.items():
            kb = memory_kb(pid)
            if kb is None:
                continue
            rss, pss = rss + kb["rss"], pss + kb["pss"]
            if group != "other":
                processes.append(
                    {"group": group, "pid": pid, "label": label,
                     "rss_mib": kb["rss"] / 1024, "pss_mib": kb["pss"] / 1024}
                )  # fmt: skip
        totals[group] = {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "count": len(members)}
    return {"processes": processes, "totals": totals}


class Sampler:
    """Samples memory every second on a thread; keeps each process's and each group's peak."""

    def __init__(self, max_seconds: float) -> None:
        self.pids = groups()
        self.max_samples = int(max_seconds / SAMPLE_INTERVAL_S) + 5
        self.peaks: dict[int, dict[str, Any]] = {}
        self.group_peaks: dict[str, dict[str, float]] = {}
        self.samples = 0
        self.balance: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set() and self.samples < self.max_samples:
            self._take()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def _take(self) -> None:
        taken = sample(self.pids)
        self.samples += 1
        if self.samples == 3:  # the load is running by now
            self.balance = connections_per_worker()
        for proc in taken["processes"]:
            peak = self.peaks.setdefault(proc["pid"], dict(proc))
            for key in ("rss_mib", "pss_mib"):
                peak[key] = max(peak[key], proc[key])
        for group, total in taken["totals"].items():
            peak = self.group_peaks.setdefault(group, dict(total))
            for key in ("rss_mib", "pss_mib"):
                peak[key] = max(peak[key], total[key])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._take()

    def result(self) -> dict[str, Any]:
        return {"processes": list(self.peaks.values()), "totals": self.group_peaks,
                "samples": self.samples, "connections_per_worker": self.balance}  # fmt: skip


def connections_per_worker() -> dict[str, int]:
    """Established connections to MLflow's port per uvicorn worker pid (how the kernel spread
    the clients' or nginx's connections over the workers, which share one listening socket)."""
    result = subprocess.run(
        ["ss", "-Htnp", "state", "established", "( sport = :5000 )"],
        capture_output=True,
        text=True,
        check=False,
    )
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        for part in line.split("pid=")[1:]:
            pid = part.split(",")[0]
            counts[pid] = counts.get(pid, 0) + 1
    return counts


# ----- CPU accounting ----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = _read(PROC / str(pid) / "stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if len(fields) > 12 else 0.0


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (/proc/stat is not namespaced)."""
    values = [int(v) for v in _read(PROC / "stat").splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


@contextmanager
def cpu_meter(pids: dict[str, dict[int, str]]) -> Iterator[dict[str, float]]:
    """CPU seconds of MLflow's and nginx's processes, of this agent and its children (the
    client), and the machine's busy share, over the `with` block."""
    tracked = {g: list(members) for g, members in pids.items() if g in ("mlflow", "nginx")}
    before = {g: sum(_cpu_seconds(p) for p in members) for g, members in tracked.items()}
    usage = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    busy0, total0 = _machine_cpu()
    started = time.monotonic()
    result: dict[str, float] = {}
    yield result
    for group, members in tracked.items():
        result[f"{group}_cpu_s"] = sum(_cpu_seconds(p) for p in members) - before[group]
    after = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    result["client_cpu_s"] = sum(
        (a.ru_utime + a.ru_stime) - (b.ru_utime + b.ru_stime)
        for a, b in zip(after, usage, strict=True)
    )
    busy1, total1 = _machine_cpu()
    result["machine_busy_share"] = (busy1 - busy0) / max(total1 - total0, 1.0)
    result["wall_s"] = time.monotonic() - started


# ----- wrk ---------------------------------------------------------------------------------

LUA_TEMPLATE = """
local mode = "%(mode)s"
local tag = "%(tag)s"
local runs = {%(runs)s}
local base_ts = %(base_ts)d
local per_batch = %(per_batch)d
local counter = 0
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function init(args)
%(headers)s
  if mode ~= "get" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
end

-- Unique (run, key, step) per request: MLflow takes a slower path for duplicate metrics.
local function metric_body(n, run)
  return string.format('{"run_id":"%%s","key":"%%s","value":%%d,"timestamp":%%.0f,"step":%%d}',
    run, tag, n %% 1000, base_ts + n, n)
end

local function batch_body(n, run)
  local parts = {}
  for i = 0, per_batch - 1 do
    parts[#parts + 1] = string.format('{"key":"%%s","value":%%d,"timestamp":%%.0f,"step":%%.0f}',
      tag, i, base_ts + n, n * per_batch + i)
  end
  return string.format('{"run_id":"%%s","metrics":[%%s]}', run, table.concat(parts, ","))
end

if mode ~= "get" then
  request = function()
    counter = counter + 1
    local n = counter * 64 + tid
    local run = runs[(counter %% #runs) + 1]
    local body = mode == "metric" and metric_body(n, run) or batch_body(n, run)
    return wrk.format(nil, nil, nil, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(config: dict[str, Any]) -> str:
    headers = "\n".join(
        f"  wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
        for name, value in config.get("headers", {}).items()
    )
    return LUA_TEMPLATE % {
        "mode": config["mode"],
        "tag": config.get("tag", "m"),
        "runs": ",".join(_lua_string(r) for r in config.get("runs", ["none"])),
        "base_ts": int(config.get("base_ts", time.time() * 1000)),
        "per_batch": int(config.get("per_batch", 100)),
        "headers": headers,
        "mark": JSON_MARK,
    }


def run_wrk(config: dict[str, Any]) -> dict[str, Any]:
    """wrk -tT -cC -dD --timeout 30s URL with the generated script; its JSON summary."""
    duration = float(config["duration"])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        os.chmod(handle.name, 0o600)
        handle.write(wrk_script(config))
    argv = ["wrk", f"-t{config['threads']}", f"-c{config['connections']}", f"-d{duration:g}s",
            "--timeout", "30s", "-s", handle.name, config["url"]]  # fmt: skip
    try:
        with Sampler(duration + 30) as sampler, cpu_meter(sampler.pids) as cpu:
            output = subprocess.run(
                argv, capture_output=True, text=True, timeout=duration + 60, check=False
            )
    finally:
        os.unlink(handle.name)
    lines = [line for line in output.stdout.splitlines() if line.startswith(JSON_MARK)]
    if output.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({output.returncode}): {output.stderr}{output.stdout}")
    result = json.loads(lines[-1][len(JSON_MARK) :])
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return {"load": result, "cpu": cpu, "memory_peak": sampler.result()}


# ----- artifacts (keep-alive Python clients) ---------------------------------------------


def _connection(url: str, cadata: str | None) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        # The nginx case goes to 127.0.0.1 while the certificate names the public name and
        # IP: the chain is verified against the host's certificate, the name is not.
        context = ssl.create_default_context(cadata=cadata)
        context.check_hostname = False
        return http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context,
                                           timeout=120)  # fmt: skip
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=120)


class ArtifactClient:
    """One keep-alive connection doing PUT or GET of one object in a bounded loop."""

    def __init__(self, config: dict[str, Any], index: int, payload: bytes) -> None:
        self.config, self.payload = config, payload
        self.path = (
            f"{urlsplit(config['url']).path.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/"
            f"{config['prefix']}/client-{index}.bin"
        )
        self.headers = dict(config.get("headers", {}))
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.bytes = 0
        self.buffer = memoryview(bytearray(1 << 20))  # reused: no allocation per read
        self.conn = _connection(config["url"], config.get("cadata"))

    def _request(self, method: str) -> None:
        body = self.payload if method == "PUT" else None
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        self.conn.request(method, self.path, body=body, headers=headers)
        response = self.conn.getresponse()
        received = 0
        for _ in range(100_000):  # bounded: 100 GB at 1 MB per read
            count = response.readinto(self.buffer)
            if not count:
                break
            received += count
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        if method == "GET" and received != len(self.payload):
            raise RuntimeError(f"short download: {received} of {len(self.payload)} bytes")
        self.bytes += len(self.payload)

    def prepare(self) -> None:
        if self.config["mode"] == "download":
            self._request("PUT")
            self.bytes = 0

    def loop(self, deadline: float, max_ops: int) -> None:
        method = "PUT" if self.config["mode"] == "upload" else "GET"
        for _ in range(max_ops):
            if time.monotonic() >= deadline:
                break
            started = time.monotonic()
            try:
                self._request(method)
                self.latencies.append(time.monotonic() - started)
            except (OSError, http.client.HTTPException, RuntimeError) as error:
                self.errors.append(repr(error))
                self.conn.close()
                self.conn = _connection(self.config["url"], self.config.get("cadata"))


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_artifacts(config: dict[str, Any]) -> dict[str, Any]:
    """N clients PUT (or GET) a random payload for `duration` s or `max_ops` each."""
    payload = os.urandom(int(config["size_mb"] * 1024 * 1024))
    clients = [ArtifactClient(config, i, payload) for i in range(int(config["clients"]))]
    _run_all([c.prepare for c in clients])
    duration = float(config["duration"])
    with Sampler(duration + 120) as sampler, cpu_meter(sampler.pids) as cpu:
        deadline = time.monotonic() + duration
        started = time.monotonic()
        _run_all([lambda c=c: c.loop(deadline, int(config["max_ops"])) for c in clients])
        elapsed = time.monotonic() - started
    latencies = [t for c in clients for t in c.latencies]
    errors = [e for c in clients for e in c.errors]
    load = {
        "requests": len(latencies), "duration_us": int(elapsed * 1e6), "errors": len(errors),
        "error_samples": errors[:5], "rps": len(latencies) / elapsed,
        "mb_per_s": sum(c.bytes for c in clients) / elapsed / 1024 / 1024,
        "p50_us": int(_percentile(latencies, 0.50) * 1e6),
        "p99_us": int(_percentile(latencies, 0.99) * 1e6),
        "mean_us": statistics.fmean(latencies) * 1e6 if latencies else 0.0,
    }  # fmt: skip
    return {"load": load, "cpu": cpu, "memory_peak": sampler.result()}


def _run_all(jobs: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3600)


# ----- entry point -------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "procs": lambda _config: sample(groups()),
    "wrk": run_wrk,
    "artifacts": run_artifacts,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"usage: {argv[0]} {{{','.join(COMMANDS)}}} < config.json", file=sys.stderr)
        return 2
    config = json.loads(sys.stdin.read() or "{}")
    print(json.dumps(COMMANDS[argv[1]](config)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
