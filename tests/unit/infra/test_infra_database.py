"""The database: private, encrypted, backed up (FSBP RDS.2, RDS.3, RDS.11)."""

from __future__ import annotations

import pulumi
from infra_mocks import DB_PASSWORD, Resources, after_registration, fresh_stack

RDS = "aws:rds/instance:Instance"
# How Pulumi's wire format marks a secret value (sdk/proto: "special signature" keys).
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"


@pulumi.runtime.test
def test_database_not_publicly_accessible_fsbp_rds_2():
    def check(res: Resources) -> None:
        assert res.one(RDS).inputs["publiclyAccessible"] is False, "RDS instance is public"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_database_storage_encrypted_fsbp_rds_3():
    def check(res: Resources) -> None:
        assert res.one(RDS).inputs["storageEncrypted"] is True, "RDS storage not encrypted"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_automated_backups_default_seven_days_fsbp_rds_11():
    def check(res: Resources) -> None:
        assert res.one(RDS).inputs["backupRetentionPeriod"] == 7

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_backup_retention_follows_setting():
    def check(res: Resources) -> None:
        assert res.one(RDS).inputs["backupRetentionPeriod"] == 35

    return after_registration(fresh_stack(dbBackupRetentionDays=35), check)


@pulumi.runtime.test
def test_final_snapshot_named_with_project_and_stack():
    def check(res: Resources) -> None:
        db = res.one(RDS).inputs
        assert db["skipFinalSnapshot"] is False
        assert db["finalSnapshotIdentifier"] == "mlflow-aws-test-final-a1b2c3d4"

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_password_is_generated_never_written():
    def check(res: Resources) -> None:
        generator = res.one("random:index/randomPassword:RandomPassword").inputs
        assert generator["length"] >= 32
        assert generator["special"] is False, "special characters break DSNs"
        password = res.one(RDS).inputs["password"]
        # The generator's result, sent to the engine as a secret value.
        assert password == {SECRET_SIG: SECRET_VALUE_SIG, "value": DB_PASSWORD}

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_database_in_private_subnets_without_internet_route():
    def check(res: Resources) -> None:
        group = res.one("aws:rds/subnetGroup:SubnetGroup")
        assert res.one(RDS).inputs["dbSubnetGroupName"] == group.state["name"]
        subnets = [res.by_id(i) for i in group.inputs["subnetIds"]]
        assert len({s.inputs["availabilityZone"] for s in subnets}) == 2
        assert all("-private-" in s.name for s in subnets)
        igw = res.one("aws:ec2/internetGateway:InternetGateway").id
        for subnet in subnets:
            (assoc,) = [
                a
                for a in res.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
                if a.inputs["subnetId"] == subnet.id
            ]
            table = assoc.inputs["routeTableId"]
            routes = [
                r for r in res.of_type("aws:ec2/route:Route") if r.inputs["routeTableId"] == table
            ]
            assert not [r for r in routes if r.inputs.get("gatewayId") == igw]
            assert not res.by_id(table).inputs.get("routes")

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_engine_class_and_names():
    def check(res: Resources) -> None:
        db = res.one(RDS).inputs
        assert db["engine"] == "postgres"
        assert db["engineVersion"] == "17"
        assert db["instanceClass"] == "db.t4g.micro"
        assert (db["dbName"], db["username"], db["port"]) == ("mlflow", "mlflow", 5432)
        assert db["allocatedStorage"] == 20
        assert db["storageType"] == "gp3"
        assert db["deletionProtection"] is False
        assert db["maxAllocatedStorage"] == 100, "storage autoscaling on by default"
        assert db["multiAz"] is False

    return after_registration(fresh_stack(), check)


@pulumi.runtime.test
def test_storage_autoscaling_off_and_multi_az():
    def check(res: Resources) -> None:
        db = res.one(RDS).inputs
        assert db["maxAllocatedStorage"] == 0, "0 turns storage autoscaling off"
        assert db["multiAz"] is True
        # The standby needs the subnet group's second zone.
        group = res.one("aws:rds/subnetGroup:SubnetGroup")
        zones = {res.by_id(i).inputs["availabilityZone"] for i in group.inputs["subnetIds"]}
        assert len(zones) == 2

    return after_registration(fresh_stack(dbMaxAllocatedStorage=0, dbMultiAz=True), check)


@pulumi.runtime.test
def test_storage_autoscaling_ceiling_follows_setting():
    def check(res: Resources) -> None:
        db = res.one(RDS).inputs
        assert (db["allocatedStorage"], db["maxAllocatedStorage"]) == (200, 1000)

    return after_registration(
        fresh_stack(dbAllocatedStorage=200, dbMaxAllocatedStorage=1000), check
    )


@pulumi.runtime.test
def test_settings_reach_the_database():
    def check(res: Resources) -> None:
        db = res.one(RDS).inputs
        assert db["engineVersion"] == "16"
        assert db["instanceClass"] == "db.t4g.small"
        assert db["allocatedStorage"] == 50
        assert db["deletionProtection"] is True

    stack = fresh_stack(
        dbEngineVersion="16",
        dbInstanceClass="db.t4g.small",
        dbAllocatedStorage=50,
        deletionProtection=True,
    )
    return after_registration(stack, check)
