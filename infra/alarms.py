"""CloudWatch alarms and the SNS topic every one of them notifies.

- per host: a failed system status check (the AWS hardware or network under it) recovers the
  instance onto healthy hardware (same ID, addresses, volume); a failed instance status check
  (the OS: kernel panic, exhausted memory, broken network config) reboots it;
- the database: free storage under 10% of the allocated size, and, on burstable classes
  (db.t3, db.t4g), a low CPU credit balance;
- with several hosts: a host out of the load balancer's rotation for three minutes.

Every alarm publishes to one topic (and its recovery too), with or without the optional
`alarmEmail` subscription. The topic is encrypted with a customer managed KMS key: CloudWatch
cannot publish to a topic under the AWS managed key alias/aws/sns, whose key policy does not
let CloudWatch use it and cannot be changed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
from pulumi_aws.get_caller_identity import get_caller_identity_output

from infra.naming import Naming
from infra.settings import StackSettings

# Status check metrics arrive every minute, free, with or without detailed monitoring.
STATUS_CHECK_PERIOD = 60
# AWS's recommended alarm for recovery: two failed minutes in a row. The OS gets three before a
# reboot (a long boot or a busy minute should not reboot a host that is coming back).
SYSTEM_CHECK_MINUTES = 2
INSTANCE_CHECK_MINUTES = 3
# RDS metrics: one data point a minute; five minutes smooth a vacuum or a bulk import.
RDS_PERIOD = 60
RDS_MINUTES = 5
FREE_STORAGE_RATIO = 0.10
# The CPU credit balance alarm fires under 10% of the class's maximum (24 hours of earnings).
CPU_CREDIT_RATIO = 0.10
# Credits earned per hour by burstable RDS classes (db.t3 and db.t4g alike); the balance caps
# at 24 hours' worth. From the RDS DB instance class tables.
CPU_CREDITS_PER_HOUR = {
    "micro": 12,
    "small": 24,
    "medium": 24,
    "large": 36,
    "xlarge": 96,
    "2xlarge": 192,
}
BURSTABLE_DB_FAMILIES = ("t3", "t4g")
# A rolling restart takes one host out of rotation for about 40 s at a time; a host counted
# unhealthy for three whole minutes (the minimum of each minute above 0) is a real outage.
UNHEALTHY_PERIOD = 60
UNHEALTHY_MINUTES = 3

_DB_CLASS = re.compile(r"^db\.(?P<family>[a-z0-9]+)\.(?P<size>[a-z0-9]+)$")
_INSTANCE_FAMILY = re.compile(r"^[a-z]+\d+(?P<suffix>[a-z-]*)$")


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm as CloudWatch takes it (the pulumi-aws MetricAlarm arguments that vary)."""

    suffix: str  # resource and alarm name: <prefix>-<suffix>
    description: str
    namespace: str
    metric_name: str
    dimensions: dict[str, pulumi.Input[str]]
    statistic: str
    period: int
    evaluation_periods: int
    comparison_operator: str
    threshold: float
    treat_missing_data: str = "missing"
    extra_actions: tuple[str, ...] = ()  # EC2 actions, besides the topic


def partition(region: str) -> str:
    """The ARN partition of a region."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def ec2_action_arn(region: str, action: str) -> str:
    """The alarm action that recovers or reboots the instance an alarm watches."""
    return f"arn:{partition(region)}:automate:{region}:ec2:{action}"


def supports_recover(instance_type: str) -> bool:
    """EC2's recover action needs EBS-only instances: not the 'd' (instance store) variants."""
    family = instance_type.partition(".")[0]
    match = _INSTANCE_FAMILY.match(family)
    return match is not None and "d" not in match["suffix"]


def free_storage_threshold_bytes(allocated_gib: int) -> float:
    """FreeStorageSpace (bytes) under which the database is nearly full."""
    return allocated_gib * 2**30 * FREE_STORAGE_RATIO


def cpu_credit_threshold(db_instance_class: str) -> float | None:
    """CPUCreditBalance under which credits run low; None for classes without credits."""
    match = _DB_CLASS.match(db_instance_class)
    if not match or match["family"] not in BURSTABLE_DB_FAMILIES:
        return None
    per_hour = CPU_CREDITS_PER_HOUR.get(match["size"])
    return None if per_hour is None else math.floor(per_hour * 24 * CPU_CREDIT_RATIO)


def topic_key_policy(account_id: str, region: str) -> dict[str, Any]:
    """The account administers the key; CloudWatch may use it only to publish alarms here."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersTheKey",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition(region)}:iam::{account_id}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "CloudWatchAlarmsPublish",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
            },
        ],
    }


def topic_policy(topic_arn: str, account_id: str) -> dict[str, Any]:
    """This account's CloudWatch alarms may publish; no one may use the topic without TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CloudWatchAlarmsPublish",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": "sns:Publish",
                "Resource": topic_arn,
                "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
            },
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sns:Publish",
                "Resource": topic_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def host_alarm_specs(
    host_name: str, instance_id: pulumi.Input[str], settings: StackSettings
) -> list[AlarmSpec]:
    recover = (
        (ec2_action_arn(settings.region, "recover"),)
        if supports_recover(settings.instance_type)
        else ()
    )
    return [
        AlarmSpec(
            suffix=f"{host_name}-system-check",
            description=(
                f"{host_name}: the AWS system status check failed (hardware, power or network "
                f"under the instance)"
                + (
                    "; EC2 recovers the instance onto healthy hardware."
                    if recover
                    else "; this instance type cannot be recovered: stop and start it."
                )
            ),
            namespace="AWS/EC2",
            metric_name="StatusCheckFailed_System",
            dimensions={"InstanceId": instance_id},
            statistic="Maximum",
            period=STATUS_CHECK_PERIOD,
            evaluation_periods=SYSTEM_CHECK_MINUTES,
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            extra_actions=recover,
        ),
        AlarmSpec(
            suffix=f"{host_name}-instance-check",
            description=(
                f"{host_name}: the instance status check failed (OS not answering: kernel, "
                f"memory, network configuration); EC2 reboots the instance."
            ),
            namespace="AWS/EC2",
            metric_name="StatusCheckFailed_Instance",
            dimensions={"InstanceId": instance_id},
            statistic="Maximum",
            period=STATUS_CHECK_PERIOD,
            evaluation_periods=INSTANCE_CHECK_MINUTES,
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            extra_actions=(ec2_action_arn(settings.region, "reboot"),),
        ),
    ]


def database_alarm_specs(
    db_identifier: pulumi.Input[str], settings: StackSettings
) -> list[AlarmSpec]:
    dimensions = {"DBInstanceIdentifier": db_identifier}
    specs = [
        AlarmSpec(
            suffix="db-free-storage",
            description=(
                f"Database free storage under {FREE_STORAGE_RATIO:.0%} of its "
                f"{settings.db_allocated_storage} GiB"
                + (
                    f": storage autoscaling grows it up to {settings.db_max_allocated_storage} "
                    f"GiB; at that ceiling raise dbMaxAllocatedStorage."
                    if settings.db_max_allocated_storage
                    else ": raise dbAllocatedStorage (or set dbMaxAllocatedStorage)."
                )
            ),
            namespace="AWS/RDS",
            metric_name="FreeStorageSpace",
            dimensions=dimensions,
            statistic="Minimum",
            period=RDS_PERIOD,
            evaluation_periods=RDS_MINUTES,
            comparison_operator="LessThanThreshold",
            threshold=free_storage_threshold_bytes(settings.db_allocated_storage),
        )
    ]
    credits = cpu_credit_threshold(settings.db_instance_class)
    if credits is not None:
        specs.append(
            AlarmSpec(
                suffix="db-cpu-credits",
                description=(
                    f"Database CPU credit balance under {credits:g} ({settings.db_instance_class}"
                    f" is burstable): it is running above its baseline and soon pays for surplus "
                    f"credits or slows down; consider a larger dbInstanceClass."
                ),
                namespace="AWS/RDS",
                metric_name="CPUCreditBalance",
                dimensions=dimensions,
                statistic="Minimum",
                period=RDS_PERIOD,
                evaluation_periods=RDS_MINUTES,
                comparison_operator="LessThanThreshold",
                threshold=credits,
            )
        )
    return specs


def load_balancer_alarm_specs(
    load_balancer_suffix: pulumi.Input[str], target_group_suffix: pulumi.Input[str]
) -> list[AlarmSpec]:
    return [
        AlarmSpec(
            suffix="lb-unhealthy-hosts",
            description=(
                f"A host has failed the load balancer's /health checks for {UNHEALTHY_MINUTES} "
                f"minutes and gets no requests; the others serve."
            ),
            namespace="AWS/ApplicationELB",
            metric_name="UnHealthyHostCount",
            dimensions={
                "LoadBalancer": load_balancer_suffix,
                "TargetGroup": target_group_suffix,
            },
            statistic="Minimum",
            period=UNHEALTHY_PERIOD,
            evaluation_periods=UNHEALTHY_MINUTES,
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            treat_missing_data="notBreaching",
        )
    ]


class Alarms(pulumi.ComponentResource):
    """The encrypted alarm topic, its optional e-mail subscription and every alarm."""

    key: aws.kms.Key
    topic: aws.sns.Topic
    subscription: aws.sns.TopicSubscription | None
    alarms: list[aws.cloudwatch.MetricAlarm]

    def __init__(
        self,
        naming: Naming,
        *,
        settings: StackSettings,
        hosts: Sequence[tuple[str, pulumi.Input[str]]],
        db_identifier: pulumi.Input[str],
        load_balancer: tuple[pulumi.Input[str], pulumi.Input[str]] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`hosts`: (name, instance ID) pairs; `load_balancer`: its and the target group's
        ARN suffixes (the CloudWatch dimensions), with several hosts."""
        super().__init__("mlflow-aws:infra:Alarms", naming.name("alarms"), None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account_id = get_caller_identity_output().account_id

        self.key = aws.kms.Key(
            naming.name("alarms-key"),
            description=f"Encrypts the alarm topic of {naming.prefix}",
            enable_key_rotation=True,  # FSBP KMS.4
            deletion_window_in_days=30,
            policy=account_id.apply(
                lambda account: json.dumps(topic_key_policy(account, settings.region))
            ),
            tags=naming.tags(naming.name("alarms-key")),
            opts=child,
        )
        aws.kms.Alias(
            naming.name("alarms-key-alias"),
            name=f"alias/{naming.name('alarms')}",
            target_key_id=self.key.key_id,
            opts=child,
        )
        self.topic = aws.sns.Topic(
            naming.name("alarms"),
            kms_master_key_id=self.key.arn,
            tags=naming.tags(naming.name("alarms")),
            opts=child,
        )
        aws.sns.TopicPolicy(
            naming.name("alarms-policy"),
            arn=self.topic.arn,
            policy=pulumi.Output.all(self.topic.arn, account_id).apply(
                lambda v: json.dumps(topic_policy(v[0], v[1]))
            ),
            opts=child,
        )
        self.subscription = None
        if settings.alarm_email:
            # Pending until the address confirms the message AWS sends it.
            self.subscription = aws.sns.TopicSubscription(
                naming.name("alarms-email"),
                topic=self.topic.arn,
                protocol="email",
                endpoint=settings.alarm_email,
                opts=child,
            )

        specs = [spec for name, iid in hosts for spec in host_alarm_specs(name, iid, settings)]
        specs += database_alarm_specs(db_identifier, settings)
        if load_balancer is not None:
            specs += load_balancer_alarm_specs(*load_balancer)
        self.alarms = [self._alarm(naming, spec, child) for spec in specs]
        self.register_outputs({"topic_arn": self.topic.arn})

    def _alarm(
        self, naming: Naming, spec: AlarmSpec, opts: pulumi.ResourceOptions
    ) -> aws.cloudwatch.MetricAlarm:
        name = naming.name(spec.suffix)
        return aws.cloudwatch.MetricAlarm(
            name,
            name=name,  # a readable subject line in the notification
            alarm_description=spec.description,
            namespace=spec.namespace,
            metric_name=spec.metric_name,
            dimensions=spec.dimensions,
            statistic=spec.statistic,
            period=spec.period,
            evaluation_periods=spec.evaluation_periods,
            datapoints_to_alarm=spec.evaluation_periods,
            comparison_operator=spec.comparison_operator,
            threshold=spec.threshold,
            treat_missing_data=spec.treat_missing_data,
            # The recovery is worth an e-mail too: the operator learns the host came back.
            alarm_actions=[*spec.extra_actions, self.topic.arn],
            ok_actions=[self.topic.arn],
            tags=naming.tags(name),
            opts=opts,
        )
