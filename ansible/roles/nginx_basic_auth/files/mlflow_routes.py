"""Which requests to MLflow's server only read: the installed release's own route table, classified.

Writes mlflow_routes.json beside this file, the data the nginx_basic_auth role builds its map of
read requests from (templates/read_routes.conf.j2): users with role `read` may make those and
nothing else. Run it with the release that `mlflow_version` pins installed (full `mlflow`, not
`mlflow-skinny`): `make read-routes` does it in a virtualenv of its own. After an upgrade of
`mlflow_version`, run it again and read the diff of the data file: new routes are listed.

    python mlflow_routes.py            # write mlflow_routes.json from the installed release
    python mlflow_routes.py --check    # exit 1 when the installed release differs from the file

Both of the server's apps count: the Flask app (`mlflow.server.app`) and the FastAPI app that
wraps it (`mlflow.server.fastapi_app`, what `mlflow server` runs: its own routes win, the Flask
app is mounted under them at "/").

How a route is classified, first match wins:
1. COSTLY paths are writes whatever the method: they spend money or run code (the AI gateway's
   invocations, LLM judges, the assistant) even when they only answer a question; and the
   gateway's stored provider credentials.
2. GET and HEAD are reads.
3. QUERY_POSTS: POST endpoints that only query (searches, gets by POST, bulk metric history,
   what the UI posts to show its pages). GraphQL is read only when every field of its schema's
   query and mutation types is a get, search or list (checked here against the schema; two
   fields only echo their input).
4. Everything else (POST, PUT, PATCH, DELETE, and OPTIONS, which a same-origin client never
   needs) is a write.
Each QUERY_POSTS or COSTLY entry must match a route of the release, or this script fails: the
lists cannot go stale silently.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

DATA_FILE = Path(__file__).with_name("mlflow_routes.json")
READ_METHODS = ("GET", "HEAD")

# Paths (regular expressions on the route's path) never open to readers, whatever the method.
COSTLY: dict[str, str] = {
    r"^/gateway/": "AI gateway endpoint: invokes a model provider (costs money)",
    r"/gateway-proxy$": "proxy to the AI gateway: invokes a model provider (costs money)",
    r"/invoke$": "runs LLM judges or scorers (costs money, runs code)",
    r"/invocations$": "invokes a model (costs money, runs code)",
    r"/assistant/": "the assistant runs code and calls a model provider",
    r"/gateway/secrets/": "the AI gateway's provider credentials",
}

# POST endpoints that only query, by path without the /api or /ajax-api prefix and version.
QUERY_POSTS: dict[str, str] = {
    "/mlflow/experiments/search": "SearchExperiments",
    "/mlflow/experiments/search-datasets": "dataset search (UI)",
    "/mlflow/runs/search": "SearchRuns",
    "/mlflow/logged-models/search": "SearchLoggedModels",
    "/mlflow/registered-models/get-latest-versions": "GetLatestVersions",
    "/mlflow/traces/search": "SearchTraces",
    "/mlflow/traces/batchGetInfos": "BatchGetTraceInfos",
    "/mlflow/traces/metrics": "QueryTraceMetrics (UI overview)",
    "/mlflow/traces/calculate-filter-correlation": "trace statistics (UI)",
    "/mlflow/datasets/search": "SearchEvaluationDatasets",
    "/mlflow/issues/search": "SearchIssues",
    "/mlflow/prompt-optimization/jobs/search": "SearchPromptOptimizationJobs",
    "/jobs/search": "job search",
}
GRAPHQL_PATH = "/graphql"
# GraphQL is one POST endpoint: a read when every field of the schema reads.
GRAPHQL_READ_FIELD = re.compile(r"^mlflow(Get|Search|List)[A-Z]")
GRAPHQL_ECHO_FIELDS = {"test", "testMutation"}  # return their input (MLflow's own schema tests)


@dataclass(frozen=True)
class Route:
    app: str  # flask | fastapi
    method: str
    path: str  # as MLflow declares it
    pattern: str  # PCRE for nginx's normalised $uri, without anchors
    access: str = ""  # read | write
    why: str = ""


# ----- reading the route table --------------------------------------------------------------

FLASK_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
FASTAPI_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
CONVERTER_PATTERNS = {"path": ".+", "int": "[0-9]+", "float": "[0-9.]+"}


def literal(text: str) -> str:
    """A literal piece of a path as PCRE that nginx keeps as is inside a quoted map key."""
    return "".join("\\" + c if c in r".^$*+?()[]{}|\"" else c for c in text)


def path_pattern(path: str, params: re.Pattern[str], converter_group: int) -> str:
    pattern, end = "", 0
    for match in params.finditer(path):
        pattern += literal(path[end : match.start()])
        converter = match.group(converter_group) or "string"
        pattern += CONVERTER_PATTERNS.get(converter, "[^/]+")
        end = match.end()
    return pattern + literal(path[end:])


def flask_routes() -> list[Route]:
    from mlflow.server import app

    routes = []
    for rule in app.url_map.iter_rules():
        pattern = path_pattern(rule.rule, FLASK_PARAM, 1)
        routes += [Route("flask", m, rule.rule, pattern) for m in sorted(rule.methods or ())]
    return routes


def fastapi_routes() -> list[Route]:
    from mlflow.server.fastapi_app import app
    from starlette.routing import Mount

    declared: list[tuple[str, set[str] | None]] = []
    for route in app.routes:
        if isinstance(route, Mount) and route.path in ("", "/"):
            continue  # the Flask app, read above
        contexts = getattr(route, "effective_route_contexts", None)  # FastAPI's included routers
        if contexts is not None:
            declared += [(context.path, context.methods) for context in contexts()]
        else:
            declared.append((route.path, getattr(route, "methods", None)))
    routes = []
    for path, methods in declared:
        if not methods:  # a WebSocket or a mount: nothing here knows what it does
            raise SystemExit(f"FastAPI route {path} has no HTTP methods: classify it here")
        pattern = path_pattern(path, FASTAPI_PARAM, 2)
        routes += [Route("fastapi", m, path, pattern) for m in sorted(methods)]
    return routes


def graphql_fields() -> list[str]:
    from mlflow.server.graphql.graphql_schema_extensions import schema

    types = [schema.graphql_schema.query_type, schema.graphql_schema.mutation_type]
    return sorted(name for kind in types if kind for name in kind.fields)


# ----- classifying ------------------------------------------------------------------------

VERSIONED = re.compile(r"^/(?:api|ajax-api)/[0-9.]+(/.*)$")


def classify(route: Route, graphql_reads_only: bool) -> Route:
    for costly, why in COSTLY.items():
        if re.search(costly, route.path):
            return Route(**{**asdict(route), "access": "write", "why": why})
    if route.method in READ_METHODS:
        access, why = "read", route.method
    elif route.method == "POST" and route.path == GRAPHQL_PATH and graphql_reads_only:
        access, why = "read", "GraphQL: every field of the schema gets, searches or lists"
    elif route.method == "POST" and unversioned(route.path) in QUERY_POSTS:
        access, why = "read", "query-only POST: " + QUERY_POSTS[unversioned(route.path)]
    else:
        access, why = "write", route.method
    return Route(**{**asdict(route), "access": access, "why": why})


def unversioned(path: str) -> str:
    match = VERSIONED.match(path)
    return match.group(1) if match else path


def classified_routes() -> tuple[str, list[Route], list[str]]:
    import mlflow

    # No environment may change the table: a static prefix would move every route.
    if os.environ.get("_MLFLOW_STATIC_PREFIX"):
        raise SystemExit("unset _MLFLOW_STATIC_PREFIX: the role serves MLflow at /")
    fields = graphql_fields()
    reads_only = all(GRAPHQL_READ_FIELD.match(f) or f in GRAPHQL_ECHO_FIELDS for f in fields)
    routes = sorted(
        {classify(r, reads_only) for r in flask_routes() + fastapi_routes()},
        key=lambda r: (r.path, r.method, r.app),
    )
    problems = stale_entries(routes) + overlaps(routes)
    if problems:
        raise SystemExit("mlflow_routes.py: " + "; ".join(problems))
    return mlflow.__version__, routes, fields


def stale_entries(routes: list[Route]) -> list[str]:
    paths = {unversioned(r.path) for r in routes if r.method == "POST"}
    stale = [f"QUERY_POSTS entry {p} is no POST route" for p in QUERY_POSTS if p not in paths]
    for costly in COSTLY:
        if not any(re.search(costly, r.path) for r in routes):
            stale.append(f"COSTLY entry {costly} matches no route")
    return stale


def sample_path(route: Route) -> str:
    """A concrete request path for the route, with made-up parameter values."""
    path = FLASK_PARAM.sub(lambda m: "a/b" if m.group(1) == "path" else "1", route.path)
    return FASTAPI_PARAM.sub(lambda m: "a/b" if m.group(2) == "path" else "1", path)


def overlaps(routes: list[Route]) -> list[str]:
    """Write routes whose sample request a read pattern of the same method would let through."""
    reads = [r for r in routes if r.access == "read"]
    found = []
    for write in (r for r in routes if r.access == "write"):
        sample = sample_path(write)
        for read in reads:
            if read.method == write.method and re.fullmatch(read.pattern, sample):
                found.append(f"{write.method} {write.path} matches read pattern {read.pattern}")
    return found


# ----- the data file ------------------------------------------------------------------------


def document(version: str, routes: list[Route], fields: list[str]) -> dict[str, object]:
    def count(selected: list[Route]) -> dict[str, int]:
        reads = sum(r.access == "read" for r in selected)
        return {"total": len(selected), "read": reads, "write": len(selected) - reads}

    # HEAD answers as GET; OPTIONS (CORS preflight) is never a read: counted apart.
    main = [r for r in routes if r.method not in ("HEAD", "OPTIONS")]
    return {
        "comment": "Generated by mlflow_routes.py from the installed MLflow; do not edit by hand.",
        "mlflow_version": version,
        "counts": {
            "routes": len({(r.app, r.path) for r in routes}),
            "flask_routes": len({r.path for r in routes if r.app == "flask"}),
            "fastapi_routes": len({r.path for r in routes if r.app == "fastapi"}),
            "methods_without_head_options": count(main),
            "all": count(routes),
        },
        "graphql_fields": sorted(set(fields)),
        "routes": [asdict(r) for r in routes],
    }


def dumps(doc: dict[str, object]) -> str:
    """JSON with one route per line: readable diffs after an upgrade."""
    head = {k: v for k, v in doc.items() if k != "routes"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "routes": [\n'
    text += ",\n".join("  " + json.dumps(r) for r in doc["routes"])  # type: ignore[union-attr]
    return text + "\n ]\n}\n"


def differences(recorded: dict[str, object], live: dict[str, object]) -> list[str]:
    def keyed(doc: dict[str, object]) -> dict[tuple[str, str, str], dict[str, str]]:
        return {(r["app"], r["method"], r["path"]): r for r in doc["routes"]}  # type: ignore[index,union-attr]

    old, new = keyed(recorded), keyed(live)
    lines = [f"not classified in the file: {k[1]} {k[2]} ({k[0]})" for k in new if k not in old]
    lines += [f"no longer served: {k[1]} {k[2]} ({k[0]})" for k in old if k not in new]
    lines += [
        f"now {new[k]['access']}: {k[1]} {k[2]}"
        for k in new
        if k in old and new[k]["access"] != old[k]["access"]
    ]
    if recorded.get("mlflow_version") != live["mlflow_version"]:
        versions = recorded.get("mlflow_version"), live["mlflow_version"]
        lines.append("recorded for MLflow {}, installed {}".format(*versions))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--data-file", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    live = document(*classified_routes())
    recorded = json.loads(args.data_file.read_text()) if args.data_file.exists() else {"routes": []}
    changes = differences(recorded, live)
    for line in changes:
        print(line)
    counts = live["counts"]
    print(f"MLflow {live['mlflow_version']}: {counts}")  # type: ignore[index]
    if args.check:
        return 1 if changes else 0
    args.data_file.write_text(dumps(live))
    print(f"wrote {args.data_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
