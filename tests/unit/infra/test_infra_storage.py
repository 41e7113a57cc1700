"""The artifact bucket (FSBP S3.1/S3.8, S3.4, S3.5, S3.12; versioning, lifecycle)."""

from __future__ import annotations

import json

import pulumi
from infra_mocks import BUCKET_NAME, Resources, after_registration, fresh_stack

BUCKET = "aws:s3/bucket:Bucket"


def _bucket_config(res: Resources, typ: str) -> dict:
    """The one configuration resource of `typ`, checked to belong to the artifact bucket."""
    config = res.one(typ)
    assert config.inputs["bucket"] == res.one(BUCKET).id
    return config.inputs


@pulumi.runtime.test
def test_public_access_blocked_fsbp_s3_1_s3_8():
    def check(res: Resources) -> None:
        block = _bucket_config(res, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        for flag in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        ):
            assert block[flag] is True, flag

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_server_side_encryption_fsbp_s3_4():
    def check(res: Resources) -> None:
        sse = _bucket_config(
            res,
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        )
        (rule,) = sse["rules"]
        assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in ("AES256", "aws:kms")

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_bucket_denies_requests_without_tls_fsbp_s3_5():
    arn = f"arn:aws:s3:::{BUCKET_NAME}"

    def check(res: Resources) -> None:
        policy = json.loads(_bucket_config(res, "aws:s3/bucketPolicy:BucketPolicy")["policy"])
        denies = [
            s
            for s in policy["Statement"]
            if s["Effect"] == "Deny"
            and s["Principal"] == "*"
            and s["Action"] == "s3:*"
            and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        ]
        assert len(denies) == 1
        assert sorted(denies[0]["Resource"]) == sorted([arn, f"{arn}/*"])
        assert not [s for s in policy["Statement"] if s["Effect"] == "Allow"]

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_acls_disabled_fsbp_s3_12():
    def check(res: Resources) -> None:
        ownership = _bucket_config(res, "aws:s3/bucketOwnershipControls:BucketOwnershipControls")
        assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_versioning_enabled():
    def check(res: Resources) -> None:
        versioning = _bucket_config(res, "aws:s3/bucketVersioning:BucketVersioning")
        assert versioning["versioningConfiguration"]["status"] == "Enabled"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_lifecycle_expires_noncurrent_versions_and_aborts_uploads():
    def check(res: Resources) -> None:
        lifecycle = _bucket_config(
            res, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
        )
        (rule,) = [r for r in lifecycle["rules"] if r["id"] == "expire-noncurrent-versions"]
        assert rule["status"] == "Enabled"
        assert rule["filter"] == {}, "applies to the whole bucket"
        assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == 90
        assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 7

    return after_registration(fresh_stack(noncurrentVersionExpiryDays=90), check)


@pulumi.runtime.test
def test_lifecycle_expires_database_backups_after_the_retention():
    def check(res: Resources) -> None:
        lifecycle = _bucket_config(
            res, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
        )
        (rule,) = [r for r in lifecycle["rules"] if r["id"] == "expire-database-backups"]
        assert rule["status"] == "Enabled"
        assert rule["filter"] == {"prefix": "backups/"}, "only the dumps, never artifacts"
        assert rule["expiration"] == {"days": 35}
        assert len(lifecycle["rules"]) == 2

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_backup_retention_follows_its_setting():
    def check(res: Resources) -> None:
        lifecycle = _bucket_config(
            res, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
        )
        (rule,) = [r for r in lifecycle["rules"] if r["id"] == "expire-database-backups"]
        assert rule["expiration"] == {"days": 7}
        artifacts = [r for r in lifecycle["rules"] if r is not rule]
        assert all("expiration" not in r for r in artifacts), "artifacts never expire"

    return after_registration(fresh_stack(backupRetentionDays=7), check)


@pulumi.runtime.test
def test_bucket_named_per_stack_and_kept_on_destroy():
    def check(res: Resources) -> None:
        bucket = res.one(BUCKET).inputs
        assert bucket["bucketPrefix"] == "mlflow-aws-test-"
        assert len(bucket["bucketPrefix"]) <= 37  # S3 limit for bucket_prefix
        assert "bucket" not in bucket, "a fixed name would collide between stacks"
        assert bucket["forceDestroy"] is False

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_no_deprecated_resource_types():
    def check(res: Resources) -> None:
        deprecated = [r.type for r in res.all if r.type.split(":")[-1].endswith("V2")]
        assert not deprecated

    return after_registration(fresh_stack(), check)
