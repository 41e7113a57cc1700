"""`__main__.py`, the program Pulumi runs: config in, outputs exported, clean errors."""

from __future__ import annotations

import pulumi
import pytest
from infra_mocks import MOCKS, run_program

CONFIG = {"aws:region": "eu-west-1", "mlflow-aws:sshAllowedCidrs": '["198.51.100.7/32"]'}


def test_program_runs_from_pulumi_config_and_exports_the_contract(stack_config, monkeypatch):
    exported: dict[str, object] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.setdefault(name, value))
    stack_config(CONFIG)
    MOCKS.reset()
    pulumi.runtime.test(run_program)()  # the program, then every registration, to completion
    assert set(exported) == {
        "hosts",
        "ssh_user",
        "ssh_private_key",
        "db_dsn",
        "artifacts_destination",
        "region",
        "url",
        "alarm_topic_arn",
        "tls",
    }
    assert exported["region"] == "eu-west-1"
    instance = [r for r in MOCKS.resources if r.type == "aws:ec2/instance:Instance"]
    assert len(instance) == 1


def test_bad_config_is_a_clean_pulumi_error(stack_config):
    stack_config({**CONFIG, "mlflow-aws:sshAllowedCidrs": '["0.0.0.0/0"]'})
    MOCKS.reset()
    with pytest.raises(pulumi.RunError, match=r"^invalid stack configuration: sshAllowedCidrs"):
        run_program()
    assert not MOCKS.resources, "no resource declared before the settings are valid"
