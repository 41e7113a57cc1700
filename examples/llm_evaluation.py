"""Evaluate a question-answering model against ground truth and track it on your MLflow server.

    eval "$(make -s credentials)"     # MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD, _SERVER_CERT_PATH
    python examples/llm_evaluation.py [--experiment NAME] [--openai-model gpt-4o-mini]

By default the model is a small deterministic local function (it picks the sentence of a tiny
knowledge base that shares the most words with the question), so the example runs offline and
always gives the same scores. With OPENAI_API_KEY set (and `pip install openai`), an OpenAI chat
model answers instead.

Uses `mlflow.genai.evaluate` (MLflow 3's replacement for `mlflow.evaluate` on LLMs) with two
scorers computed here, without any model download or network call: exact match and token F1
(SQuAD-style normalisation). The run gets the aggregated metrics (`exact_match/mean`,
`token_f1/mean`), one trace per question with its scores (the run's Evaluations view), the
evaluation data as a dataset input, and the per-row table `eval_results_table.json`.
The connection comes only from the standard MLFLOW_TRACKING_* variables.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import mlflow
import pandas as pd
from connection import ConfigError, run_with_server
from mlflow.genai.scorers import scorer

SYSTEM_PROMPT = "Answer the question in one short sentence."
TABLE_FILE = "eval_results_table.json"

# The evaluation set: questions with their ground truth.
EVAL_DATA = [
    (
        "What is MLflow?",
        "MLflow is an open-source platform for managing the machine learning lifecycle.",
    ),
    (
        "What is Apache Spark?",
        "Apache Spark is a distributed engine for large-scale data processing.",
    ),
    (
        "What does the MLflow tracking server store?",
        "The tracking server stores runs with their parameters, metrics, tags and artifacts.",
    ),
    (
        "Where does this stack keep artifacts?",
        "Artifacts are kept in an S3 bucket.",
    ),
    (
        "Which database holds run metadata?",
        "Run metadata is held in a PostgreSQL database on RDS.",
    ),
    (
        "Why use a random forest?",
        "A random forest averages many decision trees to reduce overfitting.",
    ),
]

# What the local model "knows": some answers verbatim, some worded differently, one missing.
KNOWLEDGE = [
    "MLflow is an open-source platform for managing the machine learning lifecycle.",
    "Apache Spark is a distributed engine for large-scale data processing.",
    "The tracking server stores parameters, metrics and artifacts of every run.",
    "Artifacts of this stack, such as models and plots, are kept in an S3 bucket.",
    "PostgreSQL is an open-source relational database.",
]
ARTICLES = {"a", "an", "the"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="llm-evaluation", help="experiment name")
    parser.add_argument("--run-name", default=None, help="run name (default: MLflow picks one)")
    parser.add_argument(
        "--openai-model",
        default="gpt-4o-mini",
        help="OpenAI chat model, used only when OPENAI_API_KEY is set",
    )
    return parser.parse_args(argv)


def tokens(text: str) -> list[str]:
    """SQuAD-style normalisation: lower case, no punctuation, no articles."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return [word for word in text.split() if word not in ARTICLES]


def f1(prediction: str, truth: str) -> float:
    predicted, expected = tokens(prediction), tokens(truth)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@scorer
def exact_match(outputs: str | None, expectations: dict[str, str]) -> bool:
    return tokens(outputs or "") == tokens(expectations["expected_response"])


@scorer
def token_f1(outputs: str | None, expectations: dict[str, str]) -> float:
    return round(f1(outputs or "", expectations["expected_response"]), 4)


def local_model(question: str) -> str:
    """The knowledge-base sentence sharing the most words with the question (ties: first)."""
    asked = set(tokens(question))
    overlaps = [len(asked & set(tokens(sentence))) for sentence in KNOWLEDGE]
    best = max(range(len(KNOWLEDGE)), key=overlaps.__getitem__)
    return KNOWLEDGE[best] if overlaps[best] else "I do not know."


def openai_model(model: str) -> Callable[[str], str]:
    """An OpenAI chat model answering with SYSTEM_PROMPT (needs OPENAI_API_KEY)."""
    try:
        import openai  # optional: only this path needs it
    except ImportError:
        raise ConfigError(
            "OPENAI_API_KEY is set but the openai package is missing: "
            "pip install openai (or unset OPENAI_API_KEY for the offline model)"
        ) from None
    mlflow.openai.autolog()  # each call becomes a child span with its prompt and token usage
    client = openai.OpenAI()

    def answer(question: str) -> str:
        response = client.chat.completions.create(
            model=model,
            temperature=0,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
        )
        return (response.choices[0].message.content or "").strip()

    return answer


def eval_records() -> list[dict[str, dict[str, str]]]:
    """The rows in mlflow.genai.evaluate's shape: inputs are the model's keyword arguments."""
    return [
        {"inputs": {"question": question}, "expectations": {"expected_response": truth}}
        for question, truth in EVAL_DATA
    ]


def results_table(result_df: pd.DataFrame) -> pd.DataFrame:
    """One row per question, in the data's order: question, truth, answer and its scores."""
    by_question = {row["request"]["question"]: row for _, row in result_df.iterrows()}
    rows = []
    for question, truth in EVAL_DATA:
        row = by_question[question]
        rows.append(
            {
                "question": question,
                "ground_truth": truth,
                "answer": row["response"],
                "exact_match": bool(row["exact_match/value"]),
                "token_f1": float(row["token_f1/value"]),
            }
        )
    return pd.DataFrame(rows)


def evaluate_and_log(args: argparse.Namespace, uri: str) -> tuple[str, dict[str, float]]:
    """Evaluate in a new run; return the run's UI link and the aggregated metrics."""
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(args.experiment)
    use_openai = bool(os.environ.get("OPENAI_API_KEY"))
    model_name = f"openai:{args.openai_model}" if use_openai else "local:keyword-lookup"
    predict = openai_model(args.openai_model) if use_openai else local_model

    # The root span of each row's trace (OpenAI calls nest under it); the argument name
    # matches the key of the rows' inputs.
    @mlflow.trace(name="answer_question")
    def predict_fn(question: str) -> str:
        return predict(question)

    with mlflow.start_run(run_name=args.run_name) as run:
        mlflow.log_params({"model": model_name, "questions": len(EVAL_DATA)})
        if use_openai:
            mlflow.log_param("system_prompt", SYSTEM_PROMPT)
        result = mlflow.genai.evaluate(
            data=eval_records(), predict_fn=predict_fn, scorers=[exact_match, token_f1]
        )
        table = results_table(result.result_df)
        mlflow.log_table(table, artifact_file=TABLE_FILE)
    print(table.to_string(index=False, max_colwidth=48))
    link = f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    return link, result.metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code, result = run_with_server(lambda uri: evaluate_and_log(args, uri))
    if code == 0 and result is not None:
        link, metrics = result
        for name, value in sorted(metrics.items()):
            print(f"{name}: {value:.4f}")
        print(f"run logged: {link}")
    return code


if __name__ == "__main__":
    sys.exit(main())
