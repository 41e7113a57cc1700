"""The examples (examples/*.py) run as a user runs them, against a configured test host.

Each runs in its own client virtualenv (.venv-client, built by the Makefile rule `make example`
uses) through the host's public HTTPS address with basic auth; then the MLflow client of the
test environment reads back every param, metric, dataset input, table, trace and artifact.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from standin import Host
from standin.util import REPO_ROOT
from tests.integration.figures import figure
from tests.integration.stack import STACK, Stack

pytestmark = pytest.mark.integration

CLIENT_MARKER = ".venv-client/bin/.client-installed"
RUN_LINE = re.compile(r"^run logged: (?P<uri>\S+)/#/experiments/(?P<exp>\d+)/runs/(?P<run>\w{32})$")
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]


@dataclass
class ExampleRun:
    """What an example printed, and the run it logged."""

    result: subprocess.CompletedProcess[str]
    seconds: float
    uri: str
    experiment_id: str
    run_id: str


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the MLflow or OpenAI settings of whoever runs the tests, nor the
    variables of an enclosing `make test` (its command-line variables would reach our make)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OPENAI_"))}
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # no usage reports to the internet
    env.update(extra)
    return env


def tracking_env(stack: Stack, host: Host, password: str | None = None) -> dict[str, str]:
    """The standard client variables for user team on host, as `make credentials` sets them."""
    return clean_env(
        MLFLOW_TRACKING_URI=stack.url(host).rstrip("/"),
        MLFLOW_TRACKING_USERNAME="team",
        MLFLOW_TRACKING_PASSWORD=password or stack.password("team"),
        MLFLOW_TRACKING_SERVER_CERT_PATH=str(stack.cert(host)),
    )


def run(
    command: list[str], env: Mapping[str, str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - started


def logged_run(result: subprocess.CompletedProcess[str], seconds: float) -> ExampleRun:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = [m for line in result.stdout.splitlines() if (m := RUN_LINE.match(line.strip()))]
    assert len(lines) == 1, result.stdout
    match = lines[0]
    return ExampleRun(result, seconds, match["uri"], match["exp"], match["run"])


@pytest.fixture(scope="session")
def client_python() -> Path:
    """The examples' virtualenv, built (first time: about a minute) by the Makefile's own rule."""
    result, seconds = run(["make", "--no-print-directory", CLIENT_MARKER], clean_env(), 1200)
    assert result.returncode == 0, result.stdout + result.stderr
    figure(f".venv-client ready in {seconds:.0f} s")
    return REPO_ROOT / ".venv-client" / "bin" / "python"


@pytest.fixture(scope="module")
def tracking(stack: Stack) -> Iterator[Host]:
    """Point this process's MLflow client (the checker) at the first host, as user team."""
    host = stack.bed.hosts[0]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in tracking_env(stack, host).items():
            if name.startswith("MLFLOW_"):
                patch.setenv(name, value)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield host


@pytest.fixture(scope="module")
def iris_run(stack: Stack, client_python: Path) -> ExampleRun:
    """`make example NAME=iris_random_forest`, with the test stack's outputs and credentials."""
    env = clean_env(
        STACK=STACK,
        MLFLOW_AWS_OUTPUTS_FILE=str(stack.bed.outputs_file),
        MLFLOW_AWS_CREDENTIALS_DIR=str(stack.credentials_dir),
    )
    experiment = f"examples-iris-{time.time_ns()}"
    command = ["make", "--no-print-directory", "example", "NAME=iris_random_forest"]
    example = logged_run(*run([*command, f"ARGS=--experiment {experiment}"], env))
    figure(f"iris_random_forest via make example: {example.seconds:.1f} s")
    return example


@pytest.fixture(scope="module")
def llm_run(stack: Stack, client_python: Path) -> ExampleRun:
    """examples/llm_evaluation.py with the MLFLOW_TRACKING_* variables, offline model."""
    env = tracking_env(stack, stack.bed.hosts[0])
    command = [str(client_python), "examples/llm_evaluation.py"]
    example = logged_run(*run([*command, "--experiment", f"examples-llm-{time.time_ns()}"], env))
    figure(f"llm_evaluation: {example.seconds:.1f} s")
    return example


def download_text(run_id: str, path: str, tmp_path: Path) -> str:
    from mlflow.tracking import MlflowClient

    return Path(MlflowClient().download_artifacts(run_id, path, str(tmp_path))).read_text()


# ----- iris_random_forest ------------------------------------------------------------------


def test_iris_prints_the_runs_ui_link(stack: Stack, iris_run: ExampleRun, tracking: Host) -> None:
    from mlflow.tracking import MlflowClient

    assert iris_run.uri == stack.url(tracking).rstrip("/")
    run = MlflowClient().get_run(iris_run.run_id)
    assert run.info.experiment_id == iris_run.experiment_id
    assert run.info.status == "FINISHED"
    assert stack.get(tracking, "/").ok  # the page the link opens


def test_iris_params_and_metrics(iris_run: ExampleRun, client_python: Path, tracking: Host) -> None:
    from mlflow.tracking import MlflowClient

    # Every parameter of the forest, as the client's scikit-learn reports them (str, as MLflow).
    script = (
        "import json; from sklearn.ensemble import RandomForestClassifier as F; "
        "p = F(n_estimators=100, max_depth=5, random_state=42).get_params(); "
        "print(json.dumps({k: str(v) for k, v in p.items()}))"
    )
    forest = json.loads(
        subprocess.run(
            [str(client_python), "-c", script], check=True, capture_output=True, text=True
        ).stdout
    )
    client = MlflowClient()
    data = client.get_run(iris_run.run_id).data
    assert data.params == {**forest, "test_size": "0.25", "train_rows": "112"}
    assert set(data.metrics) == {"accuracy"}
    assert 0.85 <= data.metrics["accuracy"] <= 1.0
    assert len(client.get_metric_history(iris_run.run_id, "accuracy")) == 1


def test_iris_dataset_inputs(iris_run: ExampleRun, tracking: Host) -> None:
    from mlflow.tracking import MlflowClient

    inputs = MlflowClient().get_run(iris_run.run_id).inputs.dataset_inputs
    found = {
        item.dataset.name: (
            {tag.key: tag.value for tag in item.tags}.get("mlflow.data.context"),
            json.loads(item.dataset.profile)["num_rows"],
            [column["name"] for column in json.loads(item.dataset.schema)["mlflow_colspec"]],
            item.dataset.digest,
        )
        for item in inputs
    }
    assert set(found) == {"iris-train", "iris-test"}
    assert found["iris-train"][:3] == ("training", 112, IRIS_COLUMNS)
    assert found["iris-test"][:3] == ("testing", 38, IRIS_COLUMNS)
    assert all(len(entry[3]) >= 8 for entry in found.values())


def test_iris_artifacts(stack: Stack, iris_run: ExampleRun, tracking: Host, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = iris_run.run_id
    assert {f.path for f in client.list_artifacts(run_id)} == {"confusion_matrix.png", "data"}
    assert [f.path for f in client.list_artifacts(run_id, "data")] == ["data/iris_train.csv"]

    csv = download_text(run_id, "data/iris_train.csv", tmp_path / "csv").splitlines()
    assert csv[0] == ",".join(IRIS_COLUMNS)
    assert len(csv) == 1 + 112
    assert {line.rsplit(",", 1)[1] for line in csv[1:]} == {"setosa", "versicolor", "virginica"}

    png = Path(client.download_artifacts(run_id, "confusion_matrix.png", str(tmp_path / "png")))
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 400
    assert height >= 300
    # Uploaded through the server into the bucket, not written anywhere else.
    keys = stack.bed.list_objects()
    for name in ("confusion_matrix.png", "data/iris_train.csv"):
        assert any(key.endswith(f"{run_id}/artifacts/{name}") for key in keys)


# ----- llm_evaluation ----------------------------------------------------------------------


def eval_table(run_id: str, tmp_path: Path) -> list[dict[str, object]]:
    table = json.loads(download_text(run_id, "eval_results_table.json", tmp_path))
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def test_llm_params_metrics_and_table(llm_run: ExampleRun, tracking: Host, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(llm_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == llm_run.experiment_id
    assert run.data.params == {"model": "local:keyword-lookup", "questions": "6"}
    assert set(run.data.metrics) == {"exact_match/mean", "token_f1/mean"}

    rows = eval_table(llm_run.run_id, tmp_path)
    assert len(rows) == 6
    assert set(rows[0]) == {"question", "ground_truth", "answer", "exact_match", "token_f1"}
    assert rows[0]["question"] == "What is MLflow?"
    assert all(row["question"] and row["ground_truth"] and row["answer"] for row in rows)
    # The aggregated metrics are the means of the per-row scores; the local model is
    # deterministic: 2 of the 6 answers match their ground truth exactly.
    assert sum(bool(row["exact_match"]) for row in rows) == 2
    exact = sum(bool(row["exact_match"]) for row in rows) / 6
    f1 = sum(float(row["token_f1"]) for row in rows) / 6
    assert run.data.metrics["exact_match/mean"] == pytest.approx(exact)
    assert run.data.metrics["token_f1/mean"] == pytest.approx(f1, abs=1e-4)
    assert f"exact_match/mean: {exact:.4f}" in llm_run.result.stdout


def test_llm_dataset_input_and_traces(llm_run: ExampleRun, tracking: Host) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    inputs = client.get_run(llm_run.run_id).inputs.dataset_inputs
    assert [json.loads(item.dataset.profile)["num_rows"] for item in inputs] == [6]

    # One trace per question, each with its scores and the ground truth as assessments.
    traces = client.search_traces(locations=[llm_run.experiment_id], run_id=llm_run.run_id)
    assert len(traces) == 6
    for trace in traces:
        assert trace.data.spans[0].name == "answer_question"
        names = {assessment.name for assessment in trace.info.assessments}
        assert {"exact_match", "token_f1", "expected_response"} <= names


def test_examples_leave_objects_in_the_bucket(
    stack: Stack, llm_run: ExampleRun, tracking: Host
) -> None:
    keys = stack.bed.list_objects()
    assert any(key.endswith(f"{llm_run.run_id}/artifacts/eval_results_table.json") for key in keys)


# ----- errors a user sees ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iris_random_forest", "llm_evaluation"])
def test_wrong_password_is_one_clear_line(stack: Stack, client_python: Path, name: str) -> None:
    wrong = stack.password("team") + "x"
    env = tracking_env(stack, stack.bed.hosts[0], password=wrong)
    result, seconds = run([str(client_python), f"examples/{name}.py"], env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "refused the credentials (HTTP 401)" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert seconds < 60  # no minutes of retries


@pytest.mark.parametrize("name", ["iris_random_forest", "llm_evaluation"])
def test_missing_tracking_uri_is_one_clear_line(client_python: Path, name: str) -> None:
    result, _ = run([str(client_python), f"examples/{name}.py"], clean_env(), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        'error: MLFLOW_TRACKING_URI is not set: run `eval "$(make -s credentials)"` first'
    )


def test_make_example_rejects_an_unknown_name() -> None:
    for args in (["NAME=nope"], []):
        result, _ = run(["make", "--no-print-directory", "example", *args], clean_env(), 60)
        assert result.returncode != 0
        assert "one of: iris_random_forest llm_evaluation" in result.stderr
        assert ">> installing" not in result.stdout  # checked before anything is installed
