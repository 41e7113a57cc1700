"""The stack's own domain name (setting `domain`): DNS records and the load balancer's certificate.

One host: its ACME certificate (obtained on the host by the playbook) is for the domain, and
with `hostedZoneId` an A record points the domain at the Elastic IP. Several hosts: an ACM
certificate for the domain, DNS-validated through records in the hosted zone, goes on the load
balancer, and an alias A record points the domain at it. Without `hostedZoneId` (one host) the
operator creates the A record wherever the domain's DNS is hosted.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.naming import Naming

RECORD_TTL = 300  # seconds; short enough to move the name to a new address within minutes


class HostRecord(pulumi.ComponentResource):
    """`domain` A record to one host's Elastic IP."""

    record: aws.route53.Record

    def __init__(
        self,
        naming: Naming,
        *,
        domain: str,
        zone_id: str,
        public_ip: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:HostRecord", naming.name("domain"), None, opts)
        self.record = aws.route53.Record(
            naming.name("domain-a"),
            zone_id=zone_id,
            name=domain,
            type="A",
            ttl=RECORD_TTL,
            records=[public_ip],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"fqdn": self.record.fqdn})


class LoadBalancerCertificate(pulumi.ComponentResource):
    """An ACM certificate for `domain`, validated through DNS records in the hosted zone.

    `certificate_arn` resolves only once ACM has validated it, so the HTTPS listener that uses
    it is created with a certificate that works.
    """

    certificate: aws.acm.Certificate
    validation_record: aws.route53.Record
    validation: aws.acm.CertificateValidation
    certificate_arn: pulumi.Output[str]

    def __init__(
        self,
        naming: Naming,
        *,
        domain: str,
        zone_id: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:LoadBalancerCertificate", naming.name("acm"), None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.certificate = aws.acm.Certificate(
            naming.name("acm-cert"),
            domain_name=domain,
            validation_method="DNS",
            key_algorithm="EC_prime256v1",  # P-256, like the hosts' certificates
            tags=naming.tags(naming.name("acm-cert")),
            # A new certificate is validated before the listener lets go of the old one.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=False),
        )
        option = self.certificate.domain_validation_options[0]
        self.validation_record = aws.route53.Record(
            naming.name("acm-validation"),
            zone_id=zone_id,
            name=option.resource_record_name,
            type=option.resource_record_type,
            records=[option.resource_record_value],
            ttl=60,
            allow_overwrite=True,  # ACM reuses the same CNAME for a re-requested certificate
            opts=child,
        )
        self.validation = aws.acm.CertificateValidation(
            naming.name("acm-validation"),
            certificate_arn=self.certificate.arn,
            validation_record_fqdns=[self.validation_record.fqdn],
            opts=child,
        )
        self.certificate_arn = self.validation.certificate_arn
        self.register_outputs({"certificate_arn": self.certificate_arn})

    def alias(
        self, naming: Naming, *, domain: str, zone_id: str, alb: aws.lb.LoadBalancer
    ) -> aws.route53.Record:
        """`domain` as an alias A record of the load balancer."""
        return aws.route53.Record(
            naming.name("domain-alias"),
            zone_id=zone_id,
            name=domain,
            type="A",
            aliases=[
                {"name": alb.dns_name, "zone_id": alb.zone_id, "evaluate_target_health": True}
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
