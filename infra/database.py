"""MLflow's metadata store: RDS PostgreSQL in the private subnets, encrypted, backed up."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.naming import Naming
from infra.settings import StackSettings

DB_NAME = "mlflow"
DB_USER = "mlflow"
DB_PORT = 5432


def postgres_dsn(password: str, host: str) -> str:
    """The SQLAlchemy/libpq URL MLflow's --backend-store-uri takes; the password URL-quoted."""
    return f"postgresql://{DB_USER}:{quote(password, safe='')}@{host}:{DB_PORT}/{DB_NAME}"


class Database(pulumi.ComponentResource):
    """Subnet group, generated password and the RDS instance."""

    instance: aws.rds.Instance
    dsn: pulumi.Output[str]

    def __init__(
        self,
        naming: Naming,
        *,
        settings: StackSettings,
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:Database", naming.name("database"), None, opts)
        child = pulumi.ResourceOptions(parent=self)

        subnet_group = aws.rds.SubnetGroup(
            naming.name("db"),
            description=f"Private subnets of {naming.prefix}",
            subnet_ids=list(subnet_ids),
            tags=naming.tags(naming.name("db")),
            opts=child,
        )
        # Letters and digits only: nothing that needs escaping in a URL, a shell or libpq.
        password = random.RandomPassword(
            naming.name("db-password"),
            length=32,
            special=False,
            min_lower=1,
            min_upper=1,
            min_numeric=1,
            opts=child,
        )
        # Suffix for the final snapshot's name: destroying a re-created stack again must not
        # collide with the snapshot left by the previous destroy.
        snapshot_suffix = random.RandomId(
            naming.name("db-final-snapshot"), byte_length=4, opts=child
        )

        self.instance = aws.rds.Instance(
            naming.name("db"),
            engine="postgres",
            # Major version only: RDS picks its newest minor and applies minor upgrades.
            engine_version=settings.db_engine_version,
            auto_minor_version_upgrade=True,
            instance_class=settings.db_instance_class,
            allocated_storage=settings.db_allocated_storage,
            storage_type="gp3",
            # Storage autoscaling: RDS grows the volume when under 10% is free, up to this
            # ceiling (0 turns it off). Only grows: allocated_storage is then a floor.
            max_allocated_storage=settings.db_max_allocated_storage,
            storage_encrypted=True,  # with the account's aws/rds key (FSBP RDS.3)
            db_name=DB_NAME,
            username=DB_USER,
            password=password.result,
            port=DB_PORT,
            db_subnet_group_name=subnet_group.name,
            vpc_security_group_ids=[security_group_id],
            publicly_accessible=False,  # FSBP RDS.2
            # A synchronous standby in the other zone's private subnet: failover in 1-2 minutes.
            multi_az=settings.db_multi_az,
            backup_retention_period=settings.db_backup_retention_days,  # FSBP RDS.11
            copy_tags_to_snapshot=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=snapshot_suffix.hex.apply(
                lambda h: naming.name(f"final-{h}")
            ),
            deletion_protection=settings.deletion_protection,
            # Class or storage changes wait for the maintenance window instead of
            # restarting the database in the middle of the day.
            apply_immediately=False,
            tags=naming.tags(naming.name("db")),
            opts=child,
        )
        self.dsn = pulumi.Output.secret(
            pulumi.Output.all(password.result, self.instance.address).apply(
                lambda v: postgres_dsn(v[0], v[1])
            )
        )
        self.register_outputs({"address": self.instance.address})
