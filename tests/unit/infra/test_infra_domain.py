"""TLS settings under Pulumi's mocks: the `tls` output, the url, Route 53 records and the load
balancer's DNS-validated ACM certificate (settings `tlsMode`, `domain`, `hostedZoneId`, acme*)."""

from __future__ import annotations

import pulumi
import pytest
from infra_mocks import (
    ALB_DNS,
    ALB_ZONE_ID,
    EIP_PUBLIC_DNS,
    EIP_PUBLIC_IP,
    VALIDATION_TOKEN,
    Resources,
    after_registration,
    fresh_stack,
    make_settings,
)

from infra.settings import SettingsError

RECORD = "aws:route53/record:Record"
ACM_CERT = "aws:acm/certificate:Certificate"
VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
LISTENER = "aws:lb/listener:Listener"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
DOMAIN = "mlflow.example.com"
ZONE = "Z0123456789ABCDEFGHIJ"
LE = "https://acme-v02.api.letsencrypt.org/directory"


def _expect(output: pulumi.Output, expected: object) -> pulumi.Output:
    def check(value: object) -> None:
        assert value == expected

    return output.apply(check)


# --- one host ---------------------------------------------------------------------------------


@pulumi.runtime.test
def test_default_is_acme_for_the_elastic_ip_with_no_dns_resources():
    stack = fresh_stack()

    def check(res: Resources) -> None:
        assert not res.of_type(RECORD)
        assert not res.of_type(ACM_CERT)

    assert stack.outputs["tls"] == {
        "mode": "acme", "domain": "", "acme_directory_url": LE, "acme_email": "",
        "acme_profile": "shortlived",
    }  # fmt: skip
    # The certificate is for the IP: the url must be the IP, not the EC2 DNS name.
    return pulumi.Output.all(
        after_registration(stack, check),
        _expect(stack.outputs["url"], f"https://{EIP_PUBLIC_IP}"),
    )


@pulumi.runtime.test
def test_self_signed_mode_keeps_the_dns_name_url():
    stack = fresh_stack(tlsMode="self-signed")
    assert stack.outputs["tls"] == {"mode": "self-signed"}
    return _expect(stack.outputs["url"], f"https://{EIP_PUBLIC_DNS}")


@pulumi.runtime.test
def test_domain_with_zone_gets_an_a_record_to_the_elastic_ip():
    stack = fresh_stack(domain=DOMAIN, hostedZoneId=ZONE, acmeEmail="ops@example.com")

    def check(res: Resources) -> None:
        record = res.one(RECORD)
        assert record.inputs["zoneId"] == ZONE
        assert (record.inputs["name"], record.inputs["type"]) == (DOMAIN, "A")
        assert record.inputs["records"] == [EIP_PUBLIC_IP]
        assert not res.of_type(ACM_CERT), "one host: the certificate comes from ACME on the host"

    assert stack.outputs["tls"]["domain"] == DOMAIN
    assert stack.outputs["tls"]["acme_email"] == "ops@example.com"
    return pulumi.Output.all(
        after_registration(stack, check), _expect(pulumi.Output.from_input(
            stack.outputs["url"]), f"https://{DOMAIN}")
    )  # fmt: skip


@pulumi.runtime.test
def test_domain_without_zone_creates_no_record():
    stack = fresh_stack(domain=DOMAIN)

    def check(res: Resources) -> None:
        assert not res.of_type(RECORD)

    assert stack.outputs["url"] == f"https://{DOMAIN}"
    return after_registration(stack, check)


# --- several hosts ----------------------------------------------------------------------------


@pulumi.runtime.test
def test_domain_on_a_load_balancer_gets_a_dns_validated_acm_certificate():
    stack = fresh_stack(instances=3, domain=DOMAIN, hostedZoneId=ZONE)

    def check(res: Resources) -> None:
        cert = res.one(ACM_CERT)
        assert cert.inputs["domainName"] == DOMAIN
        assert cert.inputs["validationMethod"] == "DNS"
        assert "privateKey" not in cert.inputs, "ACM makes the key; nothing secret in the state"
        records = {r.inputs["type"]: r for r in res.of_type(RECORD)}
        assert set(records) == {"CNAME", "A"}
        cname = records["CNAME"]
        assert cname.inputs["zoneId"] == ZONE
        assert cname.inputs["name"] == f"_{VALIDATION_TOKEN}.{DOMAIN}."
        assert cname.inputs["records"] == [f"_{VALIDATION_TOKEN}.acm-validations.aws."]
        validation = res.one(VALIDATION)
        assert validation.inputs["certificateArn"] == cert.state["arn"]
        assert validation.inputs["validationRecordFqdns"] == [f"_{VALIDATION_TOKEN}.{DOMAIN}"]
        (https,) = [r for r in res.of_type(LISTENER) if r.inputs["port"] == 443]
        assert https.inputs["certificateArn"] == cert.state["arn"]
        assert not res.of_type(SELF_SIGNED), "no self-signed certificate next to the ACM one"
        alias = records["A"]
        assert alias.inputs["name"] == DOMAIN
        assert alias.inputs["aliases"] == [
            {"name": ALB_DNS, "zoneId": ALB_ZONE_ID, "evaluateTargetHealth": True}
        ]

    assert stack.outputs["url"] == f"https://{DOMAIN}"
    assert "ca_certificate" not in stack.outputs, "a CA-signed certificate needs no pinning"
    # The load balancer holds the trusted certificate; the hosts behind it stay self-signed.
    assert stack.outputs["tls"] == {"mode": "self-signed"}
    return after_registration(stack, check)


@pulumi.runtime.test
def test_load_balancer_without_domain_keeps_its_self_signed_certificate():
    stack = fresh_stack(instances=2)

    def check(res: Resources) -> None:
        assert res.of_type(SELF_SIGNED)
        assert not res.of_type(RECORD)

    assert "ca_certificate" in stack.outputs
    assert stack.outputs["tls"] == {"mode": "self-signed"}
    return after_registration(stack, check)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tlsMode": "letsencrypt"}, "tlsMode 'letsencrypt' is not allowed: choose one of acme"),
        ({"domain": "mlflow..example.com"}, "domain 'mlflow..example.com' is not allowed"),
        ({"domain": "MLflow.Example.com"}, "a lowercase DNS name"),
        ({"domain": "203.0.113.10"}, "domain '203.0.113.10' is not allowed"),
        ({"acmeDirectoryUrl": "http://acme.test/dir"}, "acmeDirectoryUrl 'http://acme.test/dir'"),
        ({"acmeEmail": "ops"}, "acmeEmail 'ops' is not an e-mail address"),
        ({"acmeProfile": "Short Lived"}, "acmeProfile 'Short Lived'"),
        ({"hostedZoneId": ZONE}, "hostedZoneId needs domain"),
        ({"domain": DOMAIN, "hostedZoneId": "zone-1"}, "hostedZoneId 'zone-1'"),
        ({"domain": DOMAIN, "instances": 2}, "needs hostedZoneId"),
    ],
)
def test_bad_tls_settings_are_refused_naming_the_setting(overrides, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make_settings(**overrides)
