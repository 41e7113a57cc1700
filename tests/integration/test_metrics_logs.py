"""Day-2 operations on the configured hosts: metrics for the metrics user only, bounded logs.

On the session's `stack` (no bed or converge of its own). The stack's users include
`scraper`, with role metrics.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from standin import Host
from tests.integration.figures import figure
from tests.integration.stack import METRICS_USER, Stack, wait_serving

pytestmark = pytest.mark.integration

METRICS_PATHS = ("/metrics", "/metrics/nginx")
PROMETHEUS_DIR = "/run/mlflow-metrics"
REQUEST_COUNTER = "mlflow_http_request"  # prometheus_flask_exporter's, prefix "mlflow"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _requests_counted(stack: Stack, host: Host, *, present: bool = True) -> float:
    """MLflow's request counter summed over every label (and so every worker).

    A labelled counter has no samples, so no family at all, until the server's processes have
    answered an API request since they started: absent counts 0 unless `present` is required.
    """
    response = stack.get(host, "/metrics", user=METRICS_USER)
    assert response.status_code == 200, response.text[:200]
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    if REQUEST_COUNTER not in families:
        assert not present, sorted(families)
        return 0.0
    counter = families[REQUEST_COUNTER]
    assert counter.type == "counter"
    return sum(s.value for s in counter.samples if s.name == f"{REQUEST_COUNTER}_total")


def _stub_status(stack: Stack, host: Host) -> dict[str, int]:
    response = stack.get(host, "/metrics/nginx", user=METRICS_USER)
    assert response.status_code == 200, response.text[:200]
    match = re.search(
        r"Active connections: (\d+)\s*\nserver accepts handled requests\n\s*(\d+) (\d+) (\d+)",
        response.text,
    )
    assert match, response.text
    return {"active": int(match[1]), "requests": int(match[4])}


# ----- who may read the metrics -----------------------------------------------------------------


@pytest.mark.parametrize("path", METRICS_PATHS)
def test_metrics_refused_without_credentials(stack: Stack, path: str) -> None:
    response = stack.get(stack.bed.hosts[0], path, user=None)
    assert response.status_code == 401
    assert "mlflow_" not in response.text
    assert "Active connections" not in response.text


@pytest.mark.parametrize("path", METRICS_PATHS)
def test_metrics_refused_to_a_normal_user(stack: Stack, path: str) -> None:
    response = stack.get(stack.bed.hosts[0], path, user="team")
    assert response.status_code == 403
    assert "mlflow_" not in response.text
    assert "Active connections" not in response.text


@pytest.mark.parametrize("path", METRICS_PATHS)
def test_metrics_refused_with_a_wrong_password(stack: Stack, path: str) -> None:
    host = stack.bed.hosts[0]
    for user in (METRICS_USER, "team"):
        response = requests.get(
            stack.url(host, path), auth=(user, "wrong-password"), verify=stack.cert(host),
            timeout=30,
        )  # fmt: skip
        assert response.status_code == 401, user


@pytest.mark.parametrize(
    "path", ["/", SEARCH, "/metrics/", "/version", "/ajax-api/2.0/mlflow/experiments/search"]
)
def test_metrics_user_gets_nothing_but_the_metrics(stack: Stack, path: str) -> None:
    response = stack.get(stack.bed.hosts[0], path, user=METRICS_USER)
    assert response.status_code == 401, f"{path}: {response.status_code}"


# ----- what they say ----------------------------------------------------------------------------


def test_metrics_parse_and_count_requests(stack: Stack) -> None:
    """Prometheus text; the request counter grows with traffic, summed over the workers."""
    host = stack.bed.hosts[0]
    workers = int(host.run(["sh", "-c", ". /etc/mlflow/mlflow.env; echo $MLFLOW_WORKERS"]).stdout)
    before = _requests_counted(stack, host, present=False)
    sent = 40
    with requests.Session() as session:  # keep-alive: nginx spreads them over the workers
        session.auth = ("team", stack.password("team"))
        # verify per request: a session's own verify loses to REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
        # in the environment (requests issue 3829); this one failed with "self-signed".
        for _ in range(sent):
            response = session.get(stack.url(host, SEARCH), verify=stack.cert(host), timeout=30)
            assert response.status_code == 200
    after = _requests_counted(stack, host)
    # The scrape itself counts too; other tests' traffic may add more, never less.
    assert after - before >= sent, (before, after)
    files = host.run(["find", PROMETHEUS_DIR, "-name", "*.db"]).stdout.split()
    pids = {re.search(r"_(\d+)\.db$", f)[1] for f in files if re.search(r"_(\d+)\.db$", f)}
    figure(f"/metrics: {after - before:.0f} requests counted for {sent} sent, {len(pids)} "
           f"processes' files for {workers} workers")  # fmt: skip
    assert len(pids) >= min(workers, 2), files


def test_nginx_status_counts_requests(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    before = _stub_status(stack, host)
    for _ in range(5):
        stack.get(host, "/health", user=None)
    after = _stub_status(stack, host)
    assert after["requests"] >= before["requests"] + 6  # five /health and the second scrape
    assert after["active"] >= 1


def test_prometheus_files_start_afresh_with_the_server(stack: Stack) -> None:
    """Multiprocess mode: the directory is emptied at every start, inside the sandbox."""
    host = stack.bed.hosts[1]
    sent = 20
    for _ in range(sent):
        assert stack.get(host, SEARCH).status_code == 200
    stat = host.run(["stat", "-c", "%U %a", PROMETHEUS_DIR]).stdout.split()
    assert stat == ["mlflow", "700"]
    old = set(host.run(["find", PROMETHEUS_DIR, "-name", "*.db"]).stdout.split())
    assert old, "MLflow wrote no metrics files"
    counted = _requests_counted(stack, host)
    assert counted >= sent
    started = time.monotonic()
    host.systemctl("restart", "mlflow")
    wait_serving(stack, host, timeout=120)
    figure(f"mlflow restart with the Prometheus directory: serving after "
           f"{time.monotonic() - started:.1f} s")  # fmt: skip
    new = set(host.run(["find", PROMETHEUS_DIR, "-name", "*.db"]).stdout.split())
    assert not old & new, "files of the stopped processes survived the restart"
    # Only the few calls of wait_serving since the restart, not the 20 before it.
    afresh = _requests_counted(stack, host, present=False)
    assert afresh < sent, f"the counters did not start afresh ({counted} before, {afresh} after)"
    unit = host.run(["systemctl", "show", "mlflow", "-p", "RuntimeDirectory"]).stdout
    assert "mlflow-metrics" in unit


# ----- bounded logs -------------------------------------------------------------------------------


def test_journal_is_capped(stack: Stack) -> None:
    for host in stack.bed.hosts:
        config = host.run(["systemd-analyze", "cat-config", "systemd/journald.conf"]).stdout
        assert "SystemMaxUse=500M" in config
        assert "RuntimeMaxUse=64M" in config
        usage = host.run(["journalctl", "--disk-usage"])
        assert "take up" in usage.stdout, usage.stdout
        # journald states the limits it applies when it (re)starts.
        log = host.run(
            ["journalctl", "-b", "-u", "systemd-journald", "--no-pager", "-o", "cat"]
        ).stdout
        limits = re.findall(r"(System|Runtime) Journal .* is .*, max ([\d.]+[KMG]), ", log)
        assert limits, log[-2000:]
        kind, cap = limits[-1]
        # systemd 252 (Debian 12) prints 500.0M, 257 (Debian 13) 500M: compare the numbers.
        assert cap.endswith("M"), limits
        assert float(cap[:-1]) == {"System": 500, "Runtime": 64}[kind], limits
        figure(f"{host.name}: journal {usage.stdout.strip()}; {kind.lower()} journal max {cap}")


def test_nginx_logs_rotate_by_size(stack: Stack) -> None:
    host = stack.bed.hosts[1]
    debug = host.run(["logrotate", "--debug", "/etc/logrotate.d/nginx"])
    # logrotate reports config problems as "error: ..." lines (error.log is only a file name).
    problems = [
        line for line in (debug.stdout + debug.stderr).splitlines()
        if line.lower().startswith("error") or ": error" in line.lower()
    ]  # fmt: skip
    assert not problems, debug.stdout + debug.stderr
    timer = host.run(["systemctl", "show", "logrotate.timer", "-p", "TimersCalendar"]).stdout
    assert "*-*-* *:00:00" in timer, timer  # hourly
    # A log over maxsize is rotated at the next run, and nginx goes on in a fresh file.
    log = "/var/log/nginx/access.log"
    host.run(["truncate", "-s", "101M", log])
    started = time.monotonic()
    run = host.systemctl("start", "logrotate.service", check=False)  # what the timer starts
    assert run.returncode == 0, host.run(
        ["journalctl", "-u", "logrotate", "-n", "20", "--no-pager"]
    ).stdout
    figure(f"logrotate run with a 101 MB nginx log: {time.monotonic() - started:.1f} s")
    size = int(host.run(["stat", "-c", "%s", log]).stdout)
    assert size < 1_000_000, f"{log} was not rotated ({size} bytes)"
    assert int(host.run(["stat", "-c", "%s", f"{log}.1"]).stdout) >= 101 * 2**20
    stack.get(host, "/health", user=None)
    deadline = time.monotonic() + 10
    while "/health" not in host.read_file(log) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "/health" in host.read_file(log), "nginx did not reopen its log"
    host.run(["rm", "-f", f"{log}.1"])  # 101 MB of zeros: not worth keeping on the bed
