"""The Application Load Balancer in front of several MLflow servers (instances 2 or more).

Internet-facing in the public subnets of both zones, behind its own security group. Port 443
terminates TLS with an ACM certificate (the operator's, or a self-signed one imported into
ACM) and forwards to the servers' nginx on 443; port 80 only answers with a 301 to HTTPS.
The servers keep their own self-signed certificates: an ALB does not verify target
certificates, and the hop stays encrypted inside the VPC.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from infra.naming import Naming

HTTPS_PORT = 443
HTTP_PORT = 80
# TLS 1.3 and 1.2 with forward-secret AEAD ciphers only (no CBC, like the servers' own
# Mozilla-intermediate list), plus hybrid post-quantum key exchange for clients that offer it.
# AWS's console default since 2025-09; the API default (ELBSecurityPolicy-2016-08) allows TLS 1.0.
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"
HEALTH_CHECK_PATH = "/health"  # served by nginx without credentials, answered by MLflow
# Two checks 10 s apart: a stopped server leaves the rotation within ~20 s, a restarted one
# rejoins as fast.
HEALTH_CHECK_INTERVAL = 10
HEALTH_CHECK_THRESHOLD = 2  # failed checks to leave the rotation, passed ones to rejoin
HEALTH_CHECK: aws.lb.TargetGroupHealthCheckArgsDict = {
    "enabled": True,
    "protocol": "HTTPS",
    "port": "traffic-port",
    "path": HEALTH_CHECK_PATH,
    "matcher": "200",
    "interval": HEALTH_CHECK_INTERVAL,
    "timeout": 5,
    "healthy_threshold": HEALTH_CHECK_THRESHOLD,
    "unhealthy_threshold": HEALTH_CHECK_THRESHOLD,
}
# Seconds the load balancer needs to stop sending requests to a server whose /health fails (two
# failed checks 10 s apart, plus a margin), and to send them again after it passes. Exported as
# `drain_seconds`: the playbook's rolling restarts wait this long around each host.
DRAIN_SECONDS = HEALTH_CHECK_INTERVAL * HEALTH_CHECK_THRESHOLD + 5
# Seconds a deregistered server keeps finishing its in-flight requests: short, so a rolling
# restart moves on quickly; MLflow's API calls take well under a second.
DEREGISTRATION_DELAY = 30
# ALB default. Below the 65 s keep-alive of Debian's and Ubuntu's nginx, so the load balancer,
# not nginx, closes an idle connection to a server (the reverse races and gives 502s).
IDLE_TIMEOUT = 60
# Self-signed certificate, as the servers' own: 825 days is the most Apple clients accept;
# `make infra` in the last 30 days replaces it.
SELF_SIGNED_DAYS = 825
SELF_SIGNED_RENEW_DAYS = 30
MAX_COMMON_NAME = 64  # X.509 limit; the SAN carries the full DNS name either way


def common_name(dns_name: str) -> str:
    """The certificate's CN: the DNS name when it fits, else a fixed label."""
    return dns_name if len(dns_name) <= MAX_COMMON_NAME else "mlflow"


class LoadBalancer(pulumi.ComponentResource):
    """ALB, HTTPS and HTTP listeners, target group, one attachment per server."""

    alb: aws.lb.LoadBalancer
    target_group: aws.lb.TargetGroup
    https_listener: aws.lb.Listener
    http_listener: aws.lb.Listener
    certificate_pem: pulumi.Output[str] | None  # the self-signed certificate, for clients to pin
    url: pulumi.Output[str]

    def __init__(
        self,
        naming: Naming,
        *,
        vpc_id: pulumi.Input[str],
        subnet_ids: Sequence[pulumi.Input[str]],
        security_group_id: pulumi.Input[str],
        instance_ids: Sequence[pulumi.Input[str]],
        certificate_arn: pulumi.Input[str] | None,
        deletion_protection: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mlflow-aws:infra:LoadBalancer", naming.name("lb"), None, opts)
        self._naming = naming
        self._child = pulumi.ResourceOptions(parent=self)

        self.alb = aws.lb.LoadBalancer(
            naming.name("alb"),
            load_balancer_type="application",
            internal=False,
            ip_address_type="ipv4",
            subnets=list(subnet_ids),
            security_groups=[security_group_id],
            # Requests with header names that are not valid HTTP are dropped, not forwarded
            # (FSBP ELB.4): no header smuggling past the servers' nginx.
            drop_invalid_header_fields=True,
            desync_mitigation_mode="defensive",
            idle_timeout=IDLE_TIMEOUT,
            enable_deletion_protection=deletion_protection,
            tags=naming.tags(naming.name("alb")),
            opts=self._child,
        )
        self.target_group = aws.lb.TargetGroup(
            naming.name("tg"),
            vpc_id=vpc_id,
            target_type="instance",
            protocol="HTTPS",  # to the servers' nginx, which terminates TLS itself
            port=HTTPS_PORT,
            health_check=HEALTH_CHECK,
            deregistration_delay=DEREGISTRATION_DELAY,
            tags=naming.tags(naming.name("tg")),
            opts=self._child,
        )
        for i, instance_id in enumerate(instance_ids, start=1):
            aws.lb.TargetGroupAttachment(
                naming.name(f"tg-host-{i}"),
                target_group_arn=self.target_group.arn,
                target_id=instance_id,
                port=HTTPS_PORT,
                opts=self._child,
            )

        self.certificate_pem = None
        listener_certificate: pulumi.Input[str]
        if certificate_arn is None:
            listener_certificate, self.certificate_pem = self._self_signed_certificate()
        else:
            listener_certificate = certificate_arn
        self.https_listener = aws.lb.Listener(
            naming.name("https"),
            load_balancer_arn=self.alb.arn,
            port=HTTPS_PORT,
            protocol="HTTPS",
            ssl_policy=TLS_POLICY,
            certificate_arn=listener_certificate,
            default_actions=[{"type": "forward", "target_group_arn": self.target_group.arn}],
            tags=naming.tags(naming.name("https")),
            opts=self._child,
        )
        self.http_listener = aws.lb.Listener(
            naming.name("http"),
            load_balancer_arn=self.alb.arn,
            port=HTTP_PORT,
            protocol="HTTP",
            default_actions=[
                {
                    "type": "redirect",
                    "redirect": {"protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"},
                }
            ],
            tags=naming.tags(naming.name("http")),
            opts=self._child,
        )
        self.url = self.alb.dns_name.apply(lambda dns: f"https://{dns}")
        self.register_outputs({"dns_name": self.alb.dns_name})

    def _self_signed_certificate(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """A certificate for the ALB's DNS name, imported into ACM: (ACM ARN, PEM)."""
        naming = self._naming
        # P-256 like the servers' certificates: every TLS client supports it.
        key = tls.PrivateKey(
            naming.name("lb-tls-key"), algorithm="ECDSA", ecdsa_curve="P256", opts=self._child
        )
        cert = tls.SelfSignedCert(
            naming.name("lb-tls-cert"),
            private_key_pem=key.private_key_pem,
            subject={"common_name": self.alb.dns_name.apply(common_name)},
            dns_names=[self.alb.dns_name],
            allowed_uses=["digital_signature", "server_auth"],
            is_ca_certificate=False,
            set_subject_key_id=True,
            validity_period_hours=SELF_SIGNED_DAYS * 24,
            early_renewal_hours=SELF_SIGNED_RENEW_DAYS * 24,
            opts=self._child,
        )
        imported = aws.acm.Certificate(
            naming.name("lb-cert"),
            private_key=key.private_key_pem,  # a secret in the state; ACM keeps it encrypted
            certificate_body=cert.cert_pem,
            tags=naming.tags(naming.name("lb-cert")),
            opts=self._child,
        )
        return imported.arn, cert.cert_pem
