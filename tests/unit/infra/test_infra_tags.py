"""Names and tags carry project and stack, so two stacks live side by side in one account."""

from __future__ import annotations

import pulumi
from infra_mocks import Resources, after_registration, fresh_stack

# AWS resource types that take no tags.
UNTAGGABLE = {
    "aws:ec2/route:Route",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    "aws:s3/bucketVersioning:BucketVersioning",
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketPolicy:BucketPolicy",
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    "aws:kms/alias:Alias",
    "aws:sns/topicPolicy:TopicPolicy",
    "aws:sns/topicSubscription:TopicSubscription",
}


@pulumi.runtime.test
def test_every_taggable_resource_is_tagged_with_project_and_stack():
    def check(res: Resources) -> None:
        aws_resources = [r for r in res.all if r.type.startswith("aws:")]
        assert len(aws_resources) > 30
        for r in aws_resources:
            if r.type in UNTAGGABLE:
                continue
            tags = r.inputs.get("tags", {})
            assert tags.get("Project") == "mlflow-aws", f"{r.type} {r.name}: {tags}"
            assert tags.get("Stack") == "test", f"{r.type} {r.name}: {tags}"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_root_volume_tagged():
    def check(res: Resources) -> None:
        tags = res.one("aws:ec2/instance:Instance").inputs["rootBlockDevice"]["tags"]
        assert (tags["Project"], tags["Stack"]) == ("mlflow-aws", "test")

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_names_carry_project_and_stack():
    def check(res: Resources) -> None:
        for r in res.all:
            assert r.name.startswith(("mlflow-aws-test-", "mlflow-test-")), r.name

    return after_registration(fresh_stack(), check)
