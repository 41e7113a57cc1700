"""Read-only users (role read): the MLflow client reads everything and changes nothing.

User viewer of the session's test stack (stack.py, ROLES) against the first host, with the data a
writer (team) logged: every read the client makes succeeds; every write answers 403 from nginx
(MLflow never sees it) and the database and the bucket are exactly as before. That a reader keeps
its role and the fast path through a rotation is checked by test_e2e.py's rotation test (the
same converge rotates alice, a writer, and viewer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from standin import Host
from standin.util import REPO_ROOT
from tests.integration.browser import Browser
from tests.integration.figures import figure
from tests.integration.stack import STACK, Stack, raw_request

pytestmark = pytest.mark.integration

READER = "viewer"
ROUTES_SCRIPT = REPO_ROOT / "ansible/roles/nginx_basic_auth/files/mlflow_routes.py"


@contextlib.contextmanager
def as_user(stack: Stack, host: Host, user: str) -> Iterator[None]:
    """The MLflow client's standard variables for this user, restored afterwards."""
    values = {
        "MLFLOW_TRACKING_URI": stack.url(host).rstrip("/"),
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": stack.password(user),
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(stack.cert(host)),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Logged:
    """What the writer logged for the reader to read."""

    experiment_id: str
    experiment_name: str
    run_id: str
    model_name: str
    trace_id: str


@pytest.fixture(scope="module")
def logged(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    import mlflow
    from mlflow.entities import Metric

    host = stack.bed.hosts[0]
    name = f"read-only-{int(time.time())}"
    with as_user(stack, host, "team"):
        mlflow.set_tracking_uri(stack.url(host).rstrip("/"))
        client = mlflow.MlflowClient()
        experiment_id = client.create_experiment(name)
        run = client.create_run(experiment_id, run_name="seen-by-the-reader")
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric("loss", 1 / (s + 1), now, s) for s in range(20)])
        client.log_param(run_id, "depth", "3")
        artifact = tmp_path_factory.mktemp("artifact") / "notes.txt"
        artifact.write_text("for readers\n")
        client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id)
        model_name = f"{name}-model"
        client.create_registered_model(model_name)
        client.create_model_version(model_name, f"runs:/{run_id}/notes.txt", run_id=run_id)
        mlflow.set_experiment(experiment_id=experiment_id)
        with mlflow.start_span("read-only-span") as span:
            span.set_inputs({"q": 1})
        trace_id = span.trace_id
    return Logged(experiment_id, name, run_id, model_name, trace_id)


def test_reader_reads_what_the_client_reads(stack: Stack, logged: Logged, tmp_path: Path) -> None:
    import mlflow

    host = stack.bed.hosts[0]
    started = time.monotonic()
    with as_user(stack, host, READER):
        client = mlflow.MlflowClient(tracking_uri=stack.url(host).rstrip("/"))
        names = [e.name for e in client.search_experiments(max_results=1000)]
        assert logged.experiment_name in names
        assert client.get_experiment_by_name(logged.experiment_name).experiment_id == (
            logged.experiment_id
        )
        runs = client.search_runs([logged.experiment_id])
        assert [r.info.run_id for r in runs] == [logged.run_id]
        run = client.get_run(logged.run_id)
        assert run.data.params == {"depth": "3"}
        history = client.get_metric_history(logged.run_id, "loss")
        assert [m.step for m in history] == list(range(20))
        assert [a.path for a in client.list_artifacts(logged.run_id)] == ["notes.txt"]
        local = client.download_artifacts(logged.run_id, "notes.txt", str(tmp_path))
        assert Path(local).read_text() == "for readers\n"
        models = client.search_registered_models(f"name = '{logged.model_name}'")
        assert [m.name for m in models] == [logged.model_name]
        versions = client.search_model_versions(f"name = '{logged.model_name}'")
        assert [v.version for v in versions] == ["1"]
        traces = client.search_traces(locations=[logged.experiment_id])
        assert [t.info.trace_id for t in traces] == [logged.trace_id]
    figure(f"reader: 11 reads through the MLflow client in {time.monotonic() - started:.1f} s")


def database_and_bucket(stack: Stack) -> dict[str, object]:
    """A digest of every row of every table of MLflow's database, and the bucket's keys."""
    listing = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    tables = [row[0] for row in stack.bed.query(listing)]
    found: dict[str, object] = {
        table: stack.bed.query(
            f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM \"{table}\" t"  # noqa: S608
        )
        for table in tables
    }
    found["bucket"] = sorted(stack.bed.list_objects())
    return found


def test_reader_writes_are_refused_and_change_nothing(
    stack: Stack, logged: Logged, tmp_path: Path
) -> None:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    host = stack.bed.hosts[0]
    upload = tmp_path / "upload.txt"
    upload.write_text("not from a reader\n")
    before = database_and_bucket(stack)
    with as_user(stack, host, READER):
        client = mlflow.MlflowClient(tracking_uri=stack.url(host).rstrip("/"))
        now = int(time.time() * 1000)
        writes = {
            "create_experiment": lambda: client.create_experiment("by-a-reader"),
            "create_run": lambda: client.create_run(logged.experiment_id),
            "log_metric": lambda: client.log_metric(logged.run_id, "loss", 9.0),
            "log_batch": lambda: client.log_batch(logged.run_id, [Metric("x", 1.0, now, 0)]),
            "log_artifact": lambda: client.log_artifact(logged.run_id, str(upload)),
            "set_tag": lambda: client.set_tag(logged.run_id, "who", "reader"),
            "delete_run": lambda: client.delete_run(logged.run_id),
            "register_model": lambda: mlflow.register_model(
                f"runs:/{logged.run_id}/notes.txt", logged.model_name
            ),
        }
        refused = {}
        for name, write in writes.items():
            # The artifact upload fails in requests (HTTPError), the others in MLflow's client.
            with pytest.raises((MlflowException, requests.HTTPError)) as info:
                write()
            refused[name] = str(info.value)
    not_refused = {name: text for name, text in refused.items()
                   if "read-only" not in text and "403" not in text}  # fmt: skip
    assert not_refused == {}
    assert database_and_bucket(stack) == before


ODD_SPELLINGS = [
    ("POST", "//api/2.0/mlflow/experiments/create"),
    ("POST", "/api/2.0//mlflow/experiments/create"),
    ("POST", "/api/2.0/mlflow/experiments/search/../create"),
    ("POST", "/api/2.0/mlflow/experiments/./create"),
    ("POST", "/api/2.0/mlflow/experiments/%63reate"),
    ("POST", "/api/2.0/mlflow/experiments%2Fcreate"),
    ("POST", "/api/2.0/mlflow/experiments/create."),
    ("POST", "/api/2.0/mlflow/experiments/create/"),
    ("POST", "/API/2.0/mlflow/experiments/create"),
    ("POST", "/api/2.0/mlflow/experiments/create;x=1"),
    ("POST", "/api/2.0/mlflow/experiments/search;/../create"),
    ("POST", "/api/2.0/mlflow/experiments/search%0a"),
    ("PUT", "/api/2.0/mlflow/experiments/search"),
    ("DELETE", "/api/2.0/mlflow/experiments/search"),
    ("PATCH", "/api/2.0/mlflow/experiments/search"),
    ("OPTIONS", "/api/2.0/mlflow/experiments/search"),
    ("FOO", "/api/2.0/mlflow/experiments/search"),
    ("GET", "/not-an-mlflow-route"),
    ("GET", "/api/2.0/mlflow/no-such-endpoint"),
]


@pytest.mark.parametrize(
    ("method", "target"), ODD_SPELLINGS, ids=[f"{m} {t}" for m, t in ODD_SPELLINGS]
)
def test_anything_not_known_to_be_a_read_is_refused(stack: Stack, method: str, target: str) -> None:
    host = stack.bed.hosts[0]
    status, text = raw_request(stack, host, READER, method, target)
    assert status == 403, text
    assert json.loads(text) == {"error_code": "PERMISSION_DENIED",
                                "message": f"user {READER} is read-only"}  # fmt: skip


def test_plain_reads_by_post_pass_and_a_writer_is_not_checked(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    search = "/api/2.0/mlflow/experiments/search"
    assert raw_request(stack, host, READER, "POST", search)[0] == 200
    assert raw_request(stack, host, READER, "GET", search + "?max_results=1")[0] == 200
    assert raw_request(stack, host, READER, "HEAD", "/")[0] == 200
    # The writer's odd spellings reach MLflow, which answers them as it does (never nginx's 403).
    status, text = raw_request(stack, host, "team", "GET", "/not-an-mlflow-route")
    assert (status, "read-only" in text) == (404, False)


def test_a_reader_without_the_password_learns_nothing(stack: Stack) -> None:
    host = stack.bed.hosts[0]
    url = stack.url(host, "/api/2.0/mlflow/experiments/create")
    wrong = requests.post(url, auth=(READER, "not-the-password-at-all"), json={"name": "x"},
                          verify=stack.cert(host), timeout=30)  # fmt: skip
    assert wrong.status_code == 401
    assert "read-only" not in wrong.text


def test_the_served_release_has_no_route_the_table_does_not_classify(stack: Stack) -> None:
    """The route table of the MLflow the role installed, read on the host, is the committed one."""
    host = stack.bed.hosts[0]
    data = ROUTES_SCRIPT.with_name("mlflow_routes.json")
    host.write_file("/tmp/mlflow_routes.py", ROUTES_SCRIPT.read_text())
    host.write_file("/tmp/mlflow_routes.json", data.read_text())
    started = time.monotonic()
    result = host.run(
        ["sh", "-c", "cd /tmp && /opt/mlflow/venv/bin/python mlflow_routes.py --check "
         "--data-file /tmp/mlflow_routes.json"],
        check=False,
    )  # fmt: skip
    figure(f"route table of the served MLflow: {result.stdout.strip().splitlines()[-1:]} "
           f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def credentials_env(stack: Stack, user: str) -> dict[str, str]:
    """What `make credentials USER=<user>` prints, as an environment."""
    env = {**os.environ, "STACK": STACK, "MLFLOW_AWS_OUTPUTS_FILE": str(stack.bed.outputs_file),
           "MLFLOW_AWS_CREDENTIALS_DIR": str(stack.credentials_dir)}  # fmt: skip
    printed = subprocess.run(
        ["make", "-s", "credentials", f"USER={user}"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    exported = subprocess.run(
        ["bash", "-c", f"{printed}\nenv -0"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in exported.split("\0") if "=" in line)


PROBE = """
import mlflow
from mlflow.exceptions import MlflowException
client = mlflow.MlflowClient()
print(len(client.search_experiments()) > 0)
try:
    client.create_experiment("made-with-make-credentials")
    print("created")
except MlflowException as error:
    print("refused" if "read-only" in str(error) else error)
"""


def test_make_credentials_works_for_a_reader(stack: Stack) -> None:
    env = credentials_env(stack, READER)
    assert env["MLFLOW_TRACKING_USERNAME"] == READER
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()  # fmt: skip
    assert out == ["True", "refused"]


# ----- the UI, in headless Chromium ---------------------------------------------------------

ARTIFACTS = REPO_ROOT / ".cache" / "artifacts" / "read-only"
# What MLflow's UI shows when a request fails (notifications and alerts), read from the page.
ALERTS = "[...document.querySelectorAll('[role=alert], .ant-notification-notice, .ant-message-notice')].map(e => e.innerText).join(' | ')"  # noqa: E501


@pytest.fixture(scope="module")
def browser(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium as the reader on the first host (the Authorization header set over DevTools)."""
    started = time.monotonic()
    chromium = Browser(tmp_path_factory.mktemp("chromium"), stack.cert(stack.bed.hosts[0]))
    chromium.basic_auth(READER, stack.password(READER))
    figure(f"chromium started in {time.monotonic() - started:.1f} s")
    yield chromium
    chromium.close()


ROUTES = json.loads((ROUTES_SCRIPT.parent / "mlflow_routes.json").read_text())["routes"]


def route_access(method: str, url: str) -> str | None:
    """read or write as the role's route map classifies the request; None: not routed at all."""
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
    for route in ROUTES:
        if route["method"] == method and re.fullmatch(route["pattern"], path):
            return route["access"]
    return None


def settle(browser: Browser, seconds: float = 3) -> list[tuple[int, str, str]]:
    """The page's failed requests once it stopped making new ones, minus those refused by design.

    The UI also asks for what a reader is refused by design (MLflow's auth app's users/current,
    not routed by this server; the assistant's providers, which run code): those must be 403s
    from nginx, not reads, and the page must show no error for them.
    """
    browser.pump(seconds)
    failed = [r for r in browser.responses if r[0] >= 400]
    by_design = [r for r in failed if r[0] == 403 and route_access(r[1], r[2]) != "read"]
    if by_design:
        figure("UI requests refused to the reader by design: " + ", ".join(
            f"{method} {url.split('/', 3)[-1]} ({route_access(method, url) or 'not routed'})"
            for _, method, url in by_design
        ))  # fmt: skip
    return [r for r in failed if r not in by_design]


def test_ui_shows_a_reader_the_experiments_and_a_run(
    stack: Stack, logged: Logged, browser: Browser
) -> None:
    base = stack.url(stack.bed.hosts[0])
    browser.open(base + "#/experiments")
    browser.wait_for_text(logged.experiment_name)
    failed = settle(browser)
    browser.screenshot(ARTIFACTS / "experiments.png")
    assert failed == []
    assert browser.evaluate(ALERTS) == ""
    requests_made = len(browser.responses)

    browser.open(base + f"#/experiments/{logged.experiment_id}/runs/{logged.run_id}")
    text = browser.wait_for_text("seen-by-the-reader", "depth", "loss")
    failed = settle(browser)
    browser.screenshot(ARTIFACTS / "run.png")
    assert failed == []
    assert browser.evaluate(ALERTS) == ""
    assert f"user {READER} is read-only" not in text  # the experiment's name has "read-only"
    figure(f"UI as a reader: experiment list {requests_made} requests, run page "
           f"{len(browser.responses)}, none refused; screenshots in {ARTIFACTS}")  # fmt: skip


def click(browser: Browser, selector: str, timeout: float = 30, text: str | None = None) -> None:
    """Click the element once it is on the page, as a user would (a real mouse click); with
    `text`, the first element matching `selector` whose visible text is exactly that."""
    deadline = time.monotonic() + timeout
    pick = f"[...document.querySelectorAll({json.dumps(selector)})].find(e => {json.dumps(text)} === null || e.innerText.trim() === {json.dumps(text)})"  # noqa: E501
    find = f"(() => {{ const e = {pick}; if (!e) return null; e.scrollIntoView(); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"  # noqa: E501
    while (point := browser.evaluate(find)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{selector} never appeared; the page shows: {browser.text()[:800]}"
            )
        browser.pump(0.5)
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", {"type": kind, "x": point[0], "y": point[1],
                     "button": "left", "clickCount": 1}, session=True)  # fmt: skip
    browser.pump(0.5)


def test_ui_refuses_a_readers_rename_with_mlflows_error(
    stack: Stack, logged: Logged, browser: Browser
) -> None:
    base = stack.url(stack.bed.hosts[0])
    browser.open(base + f"#/experiments/{logged.experiment_id}/runs/{logged.run_id}")
    browser.wait_for_text("seen-by-the-reader")
    settle(browser, 2)
    before = database_and_bucket(stack)
    browser.responses.clear()  # from here on: what the rename makes
    click(browser, "[data-testid=overflow-menu-trigger]")
    click(browser, "[data-testid=overflow-rename-button]")
    click(browser, "[data-testid=rename-modal-input]")
    browser.evaluate("document.querySelector('[data-testid=rename-modal-input]').select()")
    browser.call("Input.insertText", {"text": "renamed-by-a-reader"}, session=True)
    click(browser, "[role=dialog] button", text="Save")
    text = browser.wait_for_text("read-only", timeout=30)
    browser.screenshot(ARTIFACTS / "rename-refused.png")
    refused = [r for r in browser.responses if r[0] == 403]
    assert [(method, url.split("/ajax-api/")[-1]) for _, method, url in refused] == [
        ("POST", "2.0/mlflow/runs/update")
    ]
    assert f"user {READER} is read-only" in text
    assert database_and_bucket(stack) == before
    name = stack.bed.query("SELECT name FROM runs WHERE run_uuid = %s", (logged.run_id,))
    assert name == [("seen-by-the-reader",)]
