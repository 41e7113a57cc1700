"""The stack outputs: what `make infra` exports and everything downstream reads.

`infra/stack.py` exports these (secret ones as Pulumi secrets; a unit test checks names and
flags), `inventory_plugin/pulumi_stack.py` validates what it reads against them and turns them
into host variables, and `standin/testbed.py` writes them for local beds. Adding an output is
one line below. Standard library only: the inventory plugin imports this inside Ansible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# hosts: a non-empty list of {name, public_ip[, private_ip, public_dns, ssh_host_key]}
# (ssh_host_key: the public SSH host key the stack made for the host, pinned by the inventory);
# text: a string (non-empty when required); pem: a PEM certificate;
# seconds: a whole number from 0 to MAX_SECONDS;
# settings: an object of strings whose keys are those of its host_var mapping.
Kind = Literal["hosts", "text", "pem", "seconds", "settings"]
MAX_SECONDS = 600


@dataclass(frozen=True)
class Output:
    kind: Kind
    required: bool = False
    secret: bool = False  # a Pulumi secret; kept out of reprs and logs
    standin: bool = False  # written by the local stand-ins only (S3-compatible store)
    # The Ansible host variable it becomes, if any; for settings, each key's variable.
    host_var: str | Mapping[str, str] | None = None
    default: Any = None  # the value when an optional output is absent


# Output `tls`: each key and the host variable the roles read it from.
TLS_HOST_VARS = {
    "mode": "mlflow_tls_mode",
    "domain": "mlflow_domain",
    "acme_directory_url": "mlflow_acme_directory_url",
    "acme_email": "mlflow_acme_email",
    "acme_profile": "mlflow_acme_profile",
}

OUTPUTS: dict[str, Output] = {
    "hosts": Output("hosts", required=True),
    "ssh_user": Output("text", required=True, host_var="ansible_user"),
    "db_dsn": Output("text", required=True, secret=True, host_var="mlflow_db_dsn"),
    "artifacts_destination": Output("text", required=True, host_var="mlflow_artifacts_destination"),
    "region": Output("text", required=True, host_var="mlflow_aws_region"),
    "url": Output("text", required=True, host_var="mlflow_url"),
    # Only when the stack generated the key pair (no sshPublicKey in config).
    "ssh_private_key": Output("text", secret=True),
    # With a load balancer: seconds it needs to stop or resume sending requests to a host.
    "drain_seconds": Output("seconds", host_var="mlflow_drain_seconds", default=0),
    # With a self-signed load balancer certificate: the PEM clients pin.
    "ca_certificate": Output("pem"),
    # The SNS topic every alarm notifies (subscribe more endpoints than alarmEmail to it).
    "alarm_topic_arn": Output("text"),
    # The hosts' certificate settings (tlsMode, domain, acme*; the playbook checks the values).
    "tls": Output("settings", host_var=TLS_HOST_VARS),
    "s3_endpoint_url": Output("text", standin=True, host_var="mlflow_s3_endpoint_url"),
    "s3_access_key_id": Output("text", standin=True, host_var="mlflow_s3_access_key_id"),
    "s3_secret_access_key": Output(
        "text", secret=True, standin=True, host_var="mlflow_s3_secret_access_key"
    ),
}

REQUIRED = tuple(name for name, output in OUTPUTS.items() if output.required)
SECRET = frozenset(name for name, output in OUTPUTS.items() if output.secret)


def check_names(values: dict[str, Any]) -> dict[str, Any]:
    """values, after checking that it has every required output and no unknown one."""
    unknown = sorted(set(values) - set(OUTPUTS))
    missing = [name for name in REQUIRED if name not in values]
    if unknown or missing:
        raise ValueError(f"stack outputs: unknown {unknown}, missing {missing} (infra/outputs.py)")
    return values
