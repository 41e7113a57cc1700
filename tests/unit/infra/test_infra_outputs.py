"""Stack outputs: the contract with the inventory plugin; secrets stay secret."""

from __future__ import annotations

import pulumi
from infra_mocks import (
    BUCKET_NAME,
    DB_ADDRESS,
    DB_PASSWORD,
    EIP_PUBLIC_DNS,
    EIP_PUBLIC_IP,
    GENERATED_PRIVATE_KEY,
    GENERATED_PUBLIC_KEY,
    INSTANCE_PRIVATE_IP,
    REGION,
    fresh_stack,
)

from infra.database import postgres_dsn
from infra.outputs import OUTPUTS, REQUIRED

CONTRACT_KEYS = {
    "hosts",
    "ssh_user",
    "db_dsn",
    "artifacts_destination",
    "region",
    "url",
    "alarm_topic_arn",
    "tls",
}
OPERATOR_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAblW2M0gfe7BylX6rzxEMly6GaRw8/tq+CIAkv/5C8j op@laptop"
)


@pulumi.runtime.test
def test_output_names_with_generated_key():
    stack = fresh_stack()
    assert set(stack.outputs) == CONTRACT_KEYS | {"ssh_private_key"}


@pulumi.runtime.test
def test_no_private_key_output_with_operator_key():
    stack = fresh_stack(sshPublicKey=OPERATOR_KEY)
    assert set(stack.outputs) == CONTRACT_KEYS


@pulumi.runtime.test
def test_secret_outputs_are_secret():
    outputs = fresh_stack().outputs

    async def check() -> None:
        assert await outputs["db_dsn"].is_secret()
        assert await outputs["ssh_private_key"].is_secret()
        # The inventory reads these as plain values.
        for name in ("hosts", "artifacts_destination", "url"):
            assert not await outputs[name].is_secret(), name

    return check()


@pulumi.runtime.test
def test_output_values():
    outputs = fresh_stack().outputs
    assert outputs["region"] == REGION
    assert outputs["ssh_user"] == "admin"

    def check(values: list) -> None:
        hosts, dsn, destination, url, private_key = values
        assert hosts == [
            {
                "name": "mlflow-test-1",
                "public_ip": EIP_PUBLIC_IP,
                "private_ip": INSTANCE_PRIVATE_IP,
                "public_dns": EIP_PUBLIC_DNS,
                "ssh_host_key": GENERATED_PUBLIC_KEY,
            }
        ]
        assert dsn == f"postgresql://mlflow:{DB_PASSWORD}@{DB_ADDRESS}:5432/mlflow"
        assert destination == f"s3://{BUCKET_NAME}/mlflow-artifacts"
        # tlsMode acme (default) certifies the Elastic IP: clients use it, not the DNS name.
        assert url == f"https://{EIP_PUBLIC_IP}"
        assert private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert private_key == GENERATED_PRIVATE_KEY

    names = ("hosts", "db_dsn", "artifacts_destination", "url", "ssh_private_key")
    return pulumi.Output.all(*[outputs[n] for n in names]).apply(check)


def test_dsn_quotes_the_password():
    dsn = postgres_dsn("p@ss/w:rd?#%", "db.example")
    assert dsn == "postgresql://mlflow:p%40ss%2Fw%3Ard%3F%23%25@db.example:5432/mlflow"


@pulumi.runtime.test
def test_exported_names_and_secret_flags_are_the_contracts():
    """One host with a generated key, and three behind a self-signed load balancer: every
    output is one infra/outputs.py defines (not a stand-in's), every required one is there,
    and each is a Pulumi secret exactly when the contract says so."""
    one, three = fresh_stack().outputs, fresh_stack(instances=3).outputs

    async def check() -> None:
        for outputs in (one, three):
            assert set(REQUIRED) <= set(outputs) <= {n for n, o in OUTPUTS.items() if not o.standin}
            for name, value in outputs.items():
                secret = isinstance(value, pulumi.Output) and await value.is_secret()
                assert secret == OUTPUTS[name].secret, name
        assert set(three) == set(OUTPUTS) - {n for n, o in OUTPUTS.items() if o.standin}

    return check()
