"""The connection the examples share: MLFLOW_TRACKING_* checked before any MLflow call.

The connection comes only from the standard MLFLOW_TRACKING_* variables, so no password is
ever part of a URL, a command line or an example.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

T = TypeVar("T")


class ConfigError(Exception):
    """A one-line message naming what to set."""


def tracking_uri() -> str:
    """The server URL from MLFLOW_TRACKING_URI, refusing one that carries credentials."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip().rstrip("/")
    if not uri:
        raise ConfigError(
            'MLFLOW_TRACKING_URI is not set: run `eval "$(make -s credentials)"` first'
        )
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ConfigError(
            "MLFLOW_TRACKING_URI contains credentials: put them in MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD instead"
        )
    return uri


def check_server(uri: str) -> None:
    """One authenticated request without retries: a wrong address, certificate or password
    fails here in seconds (MLflow's client retries an unreachable server for minutes)."""
    try:
        response = http_request(
            get_default_host_creds(uri),  # the same MLFLOW_TRACKING_* settings MLflow uses
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=30,
            raise_on_status=False,
            params={"max_results": 1},
        )
    except MlflowException as error:
        cause = error.__context__  # the requests exception MLflow wrapped
        if isinstance(cause, requests.exceptions.SSLError):
            reason = re.search(r"\[SSL: (\w+)\]", str(cause))
            raise ConfigError(
                f"TLS with {uri} failed ({reason.group(1) if reason else 'SSLError'}): for a "
                "self-signed server, set MLFLOW_TRACKING_SERVER_CERT_PATH to its certificate "
                "(`make credentials` prints it)"
            ) from None
        reason = re.search(r"\[Errno -?\d+\] [^'\")]+", str(cause))
        detail = reason.group(0) if reason else type(cause or error).__name__
        raise ConfigError(f"cannot reach {uri}: {detail}") from None
    if response.status_code in (401, 403):
        raise ConfigError(
            f"{uri} refused the credentials (HTTP {response.status_code}): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`make credentials`)"
        )
    if response.status_code != 200:
        raise ConfigError(
            f"{uri} is not answering as an MLflow server (HTTP {response.status_code})"
        )


def run_with_server(work: Callable[[str], T]) -> tuple[int, T | None]:
    """(exit code, result) of work(server URL) after the checks above; an error is one line on
    stderr and exit code 2 (what to set) or 1 (what failed)."""
    try:
        uri = tracking_uri()
        check_server(uri)
        return 0, work(uri)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
    except (MlflowException, OSError) as error:
        # First line only: MLflow appends the server's whole response.
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1, None
