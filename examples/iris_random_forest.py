"""Train a random forest on iris and track the run on your MLflow server.

    eval "$(make -s credentials)"     # MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD, _SERVER_CERT_PATH
    python examples/iris_random_forest.py [--experiment NAME] [--n-estimators N] [--max-depth D]

Logs the model's parameters, its test accuracy, the training and test data as dataset inputs
(Datasets column of the run), the training data as a CSV artifact and a confusion-matrix PNG,
then prints the run's link in the MLflow UI. Iris is the copy bundled with scikit-learn: no
download. The connection comes only from the standard MLFLOW_TRACKING_* variables, so no
password is ever part of a URL, a command line or this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import mlflow
import pandas as pd
from connection import run_with_server
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score
from sklearn.model_selection import train_test_split

TARGET = "species"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="iris-random-forest", help="experiment name")
    parser.add_argument("--run-name", default=None, help="run name (default: MLflow picks one)")
    parser.add_argument("--n-estimators", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=5)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42, help="split and forest random state")
    return parser.parse_args(argv)


def load_frames(test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Iris as two stratified frames: four feature columns and the species name."""
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=lambda name: name.replace(" (cm)", "").replace(" ", "_"))
    frame[TARGET] = iris.target_names[iris.target]
    train, test = train_test_split(
        frame.drop(columns="target"), test_size=test_size, random_state=seed, stratify=iris.target
    )
    return train.reset_index(drop=True), test.reset_index(drop=True)


def confusion_matrix_png(
    y_true: pd.Series, y_pred: pd.Series, labels: list[str], path: Path
) -> None:
    matplotlib.use("Agg")  # file output only: works without a display
    display = ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, cmap="Blues")
    display.ax_.set_title("Iris test set: confusion matrix")
    display.figure_.tight_layout()
    display.figure_.savefig(path, dpi=100)


def train_and_log(args: argparse.Namespace, uri: str) -> str:
    """Train, log everything to a new run; return the run's UI link."""
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(args.experiment)
    train, test = load_frames(args.test_size, args.seed)
    features = [column for column in train.columns if column != TARGET]
    model = RandomForestClassifier(
        n_estimators=args.n_estimators, max_depth=args.max_depth, random_state=args.seed
    )
    model.fit(train[features], train[TARGET])
    predictions = model.predict(test[features])

    with mlflow.start_run(run_name=args.run_name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(model.get_params())
        mlflow.log_params({"test_size": args.test_size, "train_rows": len(train)})
        mlflow.log_metric("accuracy", accuracy_score(test[TARGET], predictions))
        # Dataset inputs: name, digest, schema and row count show in the run's Datasets column.
        training = mlflow.data.from_pandas(train, targets=TARGET, name="iris-train")
        mlflow.log_input(training, context="training")
        testing = mlflow.data.from_pandas(test, targets=TARGET, name="iris-test")
        mlflow.log_input(testing, context="testing")
        csv = Path(tmp, "iris_train.csv")
        train.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv), artifact_path="data")
        png = Path(tmp, "confusion_matrix.png")
        confusion_matrix_png(test[TARGET], predictions, list(model.classes_), png)
        mlflow.log_artifact(str(png))
    return f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code, link = run_with_server(lambda uri: train_and_log(args, uri))
    if code == 0:
        print(f"run logged: {link}")
    return code


if __name__ == "__main__":
    sys.exit(main())
