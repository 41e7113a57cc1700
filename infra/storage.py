"""Artifact store: a private, versioned, encrypted S3 bucket that only accepts TLS.

Encryption is SSE-S3 (AES256), not SSE-KMS: it satisfies encryption at rest (FSBP S3.4),
costs nothing per request, and needs no key policy or `kms:*` permission, so the server's
role stays scoped to this one bucket. Use a customer managed KMS key instead when you need
key-level access control or a separate audit trail of key use.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.naming import Naming
from infra.settings import BACKUP_PREFIX

# Incomplete multipart uploads (e.g. an interrupted large artifact) are billed until aborted.
ABORT_MULTIPART_DAYS = 7


def tls_only_policy(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy denying every request made without TLS (FSBP S3.5)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


class ArtifactStore(pulumi.ComponentResource):
    """The artifact bucket and its protections."""

    bucket: aws.s3.Bucket

    def __init__(
        self,
        naming: Naming,
        *,
        noncurrent_version_expiry_days: int,
        backup_retention_days: int,
        force_destroy: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:ArtifactStore", naming.name("artifacts"), None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.bucket = aws.s3.Bucket(
            naming.name("artifacts"),
            # A unique name starting with project and stack (S3 names are global).
            bucket_prefix=f"{naming.prefix[:36].rstrip('-')}-",
            force_destroy=force_destroy,
            tags=naming.tags(naming.name("artifacts")),
            opts=child,
        )
        bucket_id = self.bucket.id
        aws.s3.BucketOwnershipControls(
            naming.name("artifacts-ownership"),
            bucket=bucket_id,
            rule={"object_ownership": "BucketOwnerEnforced"},  # ACLs off (FSBP S3.12)
            opts=child,
        )
        public_access_block = aws.s3.BucketPublicAccessBlock(
            naming.name("artifacts-public-access-block"),
            bucket=bucket_id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        versioning = aws.s3.BucketVersioning(
            naming.name("artifacts-versioning"),
            bucket=bucket_id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            naming.name("artifacts-encryption"),
            bucket=bucket_id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        aws.s3.BucketPolicy(
            naming.name("artifacts-tls-only"),
            bucket=bucket_id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
            # S3 rejects policy writes racing the public access block change.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access_block]),
        )
        aws.s3.BucketLifecycleConfiguration(
            naming.name("artifacts-lifecycle"),
            bucket=bucket_id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},  # the whole bucket
                    "noncurrent_version_expiration": {
                        "noncurrent_days": noncurrent_version_expiry_days
                    },
                    "abort_incomplete_multipart_upload": {
                        "days_after_initiation": ABORT_MULTIPART_DAYS
                    },
                },
                {
                    # Database dumps (scheduled and before upgrades) expire after the retention;
                    # the rule above then keeps the expired dump as a noncurrent version for
                    # its days, so a dump deleted by mistake or malice can still be restored.
                    "id": "expire-database-backups",
                    "status": "Enabled",
                    "filter": {"prefix": f"{BACKUP_PREFIX}/"},
                    "expiration": {"days": backup_retention_days},
                },
            ],
            # Noncurrent versions only exist once versioning is on.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        self.register_outputs({"bucket": self.bucket.bucket})
