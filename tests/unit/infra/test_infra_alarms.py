"""Alarms: each watches the right resource, with its threshold, and always has an action."""

from __future__ import annotations

import json

import pulumi
import pytest
from infra_mocks import (
    ACCOUNT_ID,
    DB_IDENTIFIER,
    REGION,
    Registered,
    Resources,
    after_registration,
    fresh_stack,
)

from infra.alarms import cpu_credit_threshold, ec2_action_arn, supports_recover

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
KEY = "aws:kms/key:Key"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
EC2 = "aws:ec2/instance:Instance"
GIB = 2**30


def _alarms(res: Resources, metric: str) -> list[Registered]:
    return [a for a in res.of_type(ALARM) if a.inputs["metricName"] == metric]


def _topic_arn(res: Resources) -> str:
    return res.one(TOPIC).state["arn"]


def _instance_ids(res: Resources) -> list[str]:
    return [i.id for i in res.of_type(EC2)]


@pulumi.runtime.test
def test_each_host_recovers_on_a_failed_system_check():
    def check(res: Resources) -> None:
        alarms = _alarms(res, "StatusCheckFailed_System")
        assert sorted(a.inputs["dimensions"]["InstanceId"] for a in alarms) == sorted(
            _instance_ids(res)
        )
        for alarm in alarms:
            i = alarm.inputs
            assert i["namespace"] == "AWS/EC2"
            assert (i["statistic"], i["comparisonOperator"], i["threshold"]) == (
                "Maximum",
                "GreaterThanThreshold",
                0,
            )
            assert (i["period"], i["evaluationPeriods"], i["datapointsToAlarm"]) == (60, 2, 2)
            assert i["alarmActions"] == [f"arn:aws:automate:{REGION}:ec2:recover", _topic_arn(res)]

    return after_registration(fresh_stack(instances=3), check)


@pulumi.runtime.test
def test_each_host_reboots_on_a_failed_instance_check():
    def check(res: Resources) -> None:
        alarms = _alarms(res, "StatusCheckFailed_Instance")
        assert sorted(a.inputs["dimensions"]["InstanceId"] for a in alarms) == sorted(
            _instance_ids(res)
        )
        for alarm in alarms:
            i = alarm.inputs
            assert (i["namespace"], i["comparisonOperator"], i["threshold"]) == (
                "AWS/EC2",
                "GreaterThanThreshold",
                0,
            )
            assert i["evaluationPeriods"] == 3
            assert i["alarmActions"] == [f"arn:aws:automate:{REGION}:ec2:reboot", _topic_arn(res)]

    return after_registration(fresh_stack(instances=2), check)


@pulumi.runtime.test
def test_instance_store_types_cannot_recover_but_still_notify():
    def check(res: Resources) -> None:
        (alarm,) = _alarms(res, "StatusCheckFailed_System")
        assert alarm.inputs["alarmActions"] == [_topic_arn(res)]
        assert "cannot be recovered" in alarm.inputs["alarmDescription"]

    return after_registration(fresh_stack(instanceType="m5d.large"), check)


@pulumi.runtime.test
def test_database_free_storage_under_ten_percent_of_allocated():
    def check(res: Resources) -> None:
        (alarm,) = _alarms(res, "FreeStorageSpace")
        i = alarm.inputs
        assert i["namespace"] == "AWS/RDS"
        assert i["dimensions"] == {"DBInstanceIdentifier": DB_IDENTIFIER}
        assert i["comparisonOperator"] == "LessThanThreshold"
        assert i["threshold"] == pytest.approx(5 * GIB)  # 10% of 50 GiB, in bytes
        assert i["statistic"] == "Minimum"

    return after_registration(fresh_stack(dbAllocatedStorage=50), check)


@pulumi.runtime.test
def test_database_cpu_credits_on_a_burstable_class():
    def check(res: Resources) -> None:
        (alarm,) = _alarms(res, "CPUCreditBalance")
        i = alarm.inputs
        assert (i["namespace"], i["dimensions"]) == (
            "AWS/RDS",
            {"DBInstanceIdentifier": DB_IDENTIFIER},
        )
        # db.t4g.small earns 24 credits an hour, at most 576: alarm under 10% of that.
        assert (i["comparisonOperator"], i["threshold"]) == ("LessThanThreshold", 57)

    return after_registration(fresh_stack(dbInstanceClass="db.t4g.small"), check)


@pulumi.runtime.test
def test_no_cpu_credit_alarm_without_credits():
    def check(res: Resources) -> None:
        assert not _alarms(res, "CPUCreditBalance")
        assert len(_alarms(res, "FreeStorageSpace")) == 1

    return after_registration(fresh_stack(dbInstanceClass="db.m7g.large"), check)


@pulumi.runtime.test
def test_load_balancer_unhealthy_hosts_with_several_hosts():
    def check(res: Resources) -> None:
        (alarm,) = _alarms(res, "UnHealthyHostCount")
        i = alarm.inputs
        alb = res.one("aws:lb/loadBalancer:LoadBalancer").state["arnSuffix"]
        group = res.one("aws:lb/targetGroup:TargetGroup").state["arnSuffix"]
        assert alb.startswith("app/")
        assert group.startswith("targetgroup/")
        assert i["namespace"] == "AWS/ApplicationELB"
        assert i["dimensions"] == {"LoadBalancer": alb, "TargetGroup": group}
        assert (i["statistic"], i["comparisonOperator"], i["threshold"]) == (
            "Minimum",
            "GreaterThanThreshold",
            0,
        )
        assert (i["period"], i["evaluationPeriods"]) == (60, 3)

    return after_registration(fresh_stack(instances=2), check)


@pulumi.runtime.test
def test_one_host_has_no_load_balancer_alarm():
    def check(res: Resources) -> None:
        assert not _alarms(res, "UnHealthyHostCount")
        # system + instance check, free storage, CPU credits (db.t4g.micro)
        assert len(res.of_type(ALARM)) == 4

    return after_registration(fresh_stack(), check)


# The settings that add, remove or change alarms, every pair of their values covered at least
# once (all 32 combinations would cost a stack build each).
COMBINATIONS = [
    # instances (LB alarm), DB class (CPU credits), alarmEmail, instance type (recover), ceiling
    (1, "db.t4g.micro", "", "t3.medium", 100),
    (3, "db.r7g.large", "ops@example.com", "m5d.large", 0),
    (1, "db.r7g.large", "ops@example.com", "t3.medium", 0),
    (3, "db.t4g.micro", "", "m5d.large", 100),
    (3, "db.t4g.micro", "ops@example.com", "t3.medium", 0),
    (1, "db.r7g.large", "", "m5d.large", 100),
]


@pytest.mark.parametrize(
    ("instances", "db_class", "email", "instance_type", "max_storage"), COMBINATIONS
)
@pulumi.runtime.test
def test_no_setting_leaves_an_alarm_without_an_action(
    instances, db_class, email, instance_type, max_storage
):
    def check(res: Resources) -> None:
        topic = _topic_arn(res)
        alarms = res.of_type(ALARM)
        assert len(alarms) >= 2 * instances + 1
        for alarm in alarms:
            assert topic in alarm.inputs["alarmActions"], alarm.name
            assert alarm.inputs["okActions"] == [topic], alarm.name
            assert alarm.inputs.get("actionsEnabled", True) is not False, alarm.name
        subscriptions = res.of_type(SUBSCRIPTION)
        if email:
            (sub,) = subscriptions
            assert (sub.inputs["protocol"], sub.inputs["endpoint"]) == ("email", email)
            assert sub.inputs["topic"] == topic
        else:
            assert not subscriptions

    stack = fresh_stack(
        instances=instances,
        dbInstanceClass=db_class,
        alarmEmail=email,
        instanceType=instance_type,
        dbMaxAllocatedStorage=max_storage,
    )
    return after_registration(stack, check)


@pulumi.runtime.test
def test_topic_encrypted_with_a_key_cloudwatch_may_use():
    def check(res: Resources) -> None:
        key = res.one(KEY)
        topic = res.one(TOPIC)
        # Not alias/aws/sns: CloudWatch cannot publish to a topic under the AWS managed key.
        assert topic.inputs["kmsMasterKeyId"] == key.state["arn"]
        assert key.inputs["enableKeyRotation"] is True
        policy = json.loads(key.inputs["policy"])
        (cloudwatch,) = [
            s
            for s in policy["Statement"]
            if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
        ]
        assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
        assert cloudwatch["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT_ID}}
        topic_policy = json.loads(res.one("aws:sns/topicPolicy:TopicPolicy").inputs["policy"])
        (publish,) = [s for s in topic_policy["Statement"] if s["Effect"] == "Allow"]
        assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
        assert publish["Resource"] == topic.state["arn"]

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_topic_arn_is_an_output():
    stack = fresh_stack()
    return stack.outputs["alarm_topic_arn"].apply(
        lambda arn: _assert(arn == f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:mlflow-aws-test-alarms")
    )


def _assert(condition: bool) -> None:
    assert condition


@pytest.mark.parametrize(
    ("db_class", "expected"),
    [
        ("db.t4g.micro", 28),
        ("db.t3.micro", 28),
        ("db.t3.medium", 57),
        ("db.t4g.large", 86),
        ("db.t3.2xlarge", 460),
        ("db.m7g.large", None),
        ("db.r6i.xlarge", None),
    ],
)
def test_cpu_credit_threshold(db_class, expected):
    assert cpu_credit_threshold(db_class) == expected


@pytest.mark.parametrize(
    ("instance_type", "expected"),
    [
        ("t3.medium", True),
        ("m7i-flex.large", True),
        ("c6gn.xlarge", True),
        ("m5d.large", False),
        ("r6gd.large", False),
        ("c5ad.large", False),
    ],
)
def test_recover_needs_ebs_only_types(instance_type, expected):
    assert supports_recover(instance_type) is expected


def test_action_arns_follow_the_partition():
    assert ec2_action_arn("eu-west-1", "recover") == "arn:aws:automate:eu-west-1:ec2:recover"
    assert ec2_action_arn("us-gov-west-1", "reboot").startswith("arn:aws-us-gov:automate:")
    assert ec2_action_arn("cn-north-1", "reboot").startswith("arn:aws-cn:automate:")
