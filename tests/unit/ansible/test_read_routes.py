"""The requests read-only users may make (nginx_basic_auth role): the route table of the pinned
MLflow release, classified by files/mlflow_routes.py into files/mlflow_routes.json."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.unit.ansible.source_file import REPO, load

routes = load("mlflow_routes", "ansible/roles/nginx_basic_auth/files/mlflow_routes.py")
RECORDED = json.loads(routes.DATA_FILE.read_text())
PINNED = yaml.safe_load((REPO / "ansible/roles/mlflow/defaults/main.yml").read_text())[
    "mlflow_version"
]
SITE_TEMPLATE = REPO / "ansible/roles/nginx_basic_auth/templates/mlflow.conf.j2"


def recorded(method: str, path: str) -> str:
    found = {r["access"] for r in RECORDED["routes"] if (r["method"], r["path"]) == (method, path)}
    assert len(found) == 1, f"{method} {path}: {found or 'not in the table'}"
    return found.pop()


ROUTES_PYTHON = REPO / ".cache/mlflow-routes-venv/bin/python"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """The script in the virtualenv holding the pinned release (`make read-routes` makes it)."""
    if not ROUTES_PYTHON.exists():
        pytest.fail(
            f"{ROUTES_PYTHON} is missing: `make test-unit` (or `make read-routes`) makes it"
        )
    return subprocess.run(
        [str(ROUTES_PYTHON), str(routes.DATA_FILE.with_suffix(".py")), *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The route table of the pinned release as the script classifies it, in a file of its own."""
    path = tmp_path_factory.mktemp("routes") / "live.json"
    result = run_script("--data-file", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text())


def test_the_table_was_derived_from_the_pinned_release() -> None:
    assert RECORDED["mlflow_version"] == PINNED, "mlflow_version changed: run `make read-routes`"


def test_every_route_of_the_pinned_release_is_classified(live: dict[str, object]) -> None:
    # A route the file does not list, lists differently, or no longer exists: `make read-routes`.
    assert live["mlflow_version"] == PINNED
    assert routes.differences(RECORDED, live) == []
    assert live == RECORDED


def test_both_apps_count_and_most_requests_are_writes() -> None:
    counts = RECORDED["counts"]
    assert counts["all"]["total"] == len(RECORDED["routes"])
    assert counts["all"]["read"] + counts["all"]["write"] == counts["all"]["total"]
    assert counts["flask_routes"] > 300  # MLflow 3.17: ~410 Flask rules on ~356 paths
    assert counts["fastapi_routes"] > 50  # artifact uploads, OTLP, gateway, jobs, assistant
    main = counts["methods_without_head_options"]
    assert main["write"] > main["read"] > 100
    assert {r["access"] for r in RECORDED["routes"]} == {"read", "write"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/2.0/mlflow/runs/get"),
        ("GET", "/api/2.0/mlflow/metrics/get-history"),
        ("POST", "/api/2.0/mlflow/runs/search"),
        ("POST", "/ajax-api/2.0/mlflow/runs/search"),
        ("POST", "/api/2.0/mlflow/experiments/search"),
        ("GET", "/api/2.0/mlflow/registered-models/search"),
        ("GET", "/api/2.0/mlflow/model-versions/search"),
        ("POST", "/api/3.0/mlflow/traces/search"),
        ("POST", "/api/2.0/mlflow/logged-models/search"),
        ("GET", "/api/2.0/mlflow/artifacts/list"),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/<path:artifact_path>"),
        ("POST", "/graphql"),
        ("GET", "/"),
    ],
)
def test_reads(method: str, path: str) -> None:
    assert recorded(method, path) == "read"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/2.0/mlflow/experiments/create"),
        ("POST", "/api/2.0/mlflow/runs/create"),
        ("POST", "/api/2.0/mlflow/runs/log-metric"),
        ("POST", "/api/2.0/mlflow/runs/log-batch"),
        ("POST", "/api/2.0/mlflow/runs/set-tag"),
        ("POST", "/api/2.0/mlflow/runs/delete"),
        ("POST", "/api/2.0/mlflow/registered-models/create"),
        ("POST", "/api/2.0/mlflow/model-versions/create"),
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}"),
        ("POST", "/v1/traces"),
        ("POST", "/ajax-api/2.0/mlflow/gateway-proxy"),
        ("GET", "/ajax-api/2.0/mlflow/gateway-proxy"),  # a GET that costs money
        ("POST", "/ajax-api/3.0/mlflow/scorer/invoke"),
    ],
)
def test_writes(method: str, path: str) -> None:
    assert recorded(method, path) == "write"


def test_gateway_and_assistant_routes_are_never_reads() -> None:
    costly = [r for r in RECORDED["routes"] if re.search(r"^/gateway/|/assistant/", r["path"])]
    assert costly
    assert {r["access"] for r in costly} == {"write"}


def test_each_read_pattern_matches_its_route_and_lets_no_write_through() -> None:
    table = [routes.Route(**r) for r in RECORDED["routes"]]
    for route in table:
        assert re.fullmatch(route.pattern, routes.sample_path(route)), route
    assert routes.overlaps(table) == []


def odd_spelling_regex() -> re.Pattern[str]:
    """The site's check of the raw path, as nginx reads the quoted map key."""
    text = SITE_TEMPLATE.read_text()
    key = re.search(r'map \$request_uri \$mlflow_read_request \{\n\s+"~(.*)" 0;', text)
    assert key
    return re.compile(key.group(1))


@pytest.mark.parametrize(
    "request_uri",
    [
        "//api/2.0/mlflow/runs/search",
        "/api/2.0//mlflow/runs/search",
        "/api/2.0/mlflow/runs/create/../search",
        "/api/2.0/mlflow/runs/./search",
        "/api/2.0/mlflow/runs/search/..",
        "/api/2.0/mlflow/runs/create/%2e%2e/search",
        "/api/2.0/mlflow/runs%2Fsearch",
        "/api/2.0/mlflow/runs/search;x=1",
        "/api/2.0/mlflow/runs\\search",
        "/api/2.0/mlflow/runs%5Csearch",
        "/api/2.0/mlflow/runs/search%0a",
    ],
)
def test_odd_spellings_are_never_reads(request_uri: str) -> None:
    assert odd_spelling_regex().search(request_uri)


@pytest.mark.parametrize(
    "request_uri",
    [
        "/api/2.0/mlflow/runs/search",
        "/api/2.0/mlflow/runs/get?run_id=abc&x=a//b/../c;d",
        "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/my%20model/model.pkl",
        "/static-files/static/js/main.5f3c.js",
    ],
)
def test_plain_spellings_pass_to_the_route_table(request_uri: str) -> None:
    assert not odd_spelling_regex().search(request_uri)


def test_a_route_the_file_does_not_classify_is_named(live: dict[str, object]) -> None:
    dropped = RECORDED["routes"][0]
    fewer = {**RECORDED, "routes": RECORDED["routes"][1:]}
    named = f"not classified in the file: {dropped['method']} {dropped['path']} ({dropped['app']})"
    assert routes.differences(fewer, live) == [named]
    older = {**RECORDED, "mlflow_version": "3.16.0"}
    assert routes.differences(older, live) == ["recorded for MLflow 3.16.0, installed " + PINNED]
