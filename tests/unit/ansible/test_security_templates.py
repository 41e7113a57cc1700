"""Who is authenticated where, read from the files the roles write (their templates rendered with
the role defaults by Ansible's templar), and the security-relevant role defaults, pinned.

A change that weakens one of these fails here in a second, not only in the real-host tests:
e.g. `auth_basic` removed from a location proxied to MLflow, or the htpasswd hash scheme
weakened. Changing a pinned value on purpose means changing its pin here, with the reason."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from tests.unit.ansible.nginx_conf import (
    Directive,
    inherited,
    locations,
    map_entries,
    parse,
    password_required,
)
from tests.unit.ansible.role_render import (
    PLAY_VARIABLES,
    argument_spec_defaults,
    render,
    resolve,
    role_defaults,
)

NGINX = "nginx_basic_auth"
USERS = [
    {"name": "alice", "password": "correct-horse-battery-staple-1"},
    {"name": "bob", "password": "Tr0ub4dor&3-but-longer-now"},
]
# The only places nginx answers without a password: liveness for load balancers (HTTPS), and on
# port 80 the redirect to HTTPS and ACME challenge files (static, never MLflow).
ANONYMOUS_PROXIED = {"= /health"}


def nginx_site(**overrides: Any) -> Directive:
    """mlflow.conf with the credentials map and the metrics locations it includes, as nginx
    reads them."""
    overrides.setdefault("nginx_basic_auth_users", USERS)
    # Set by the role's tasks before the site is written: the self-signed certificate until an
    # ACME one is valid (tasks/main.yml, "Choose the certificate nginx serves").
    for served, own in (("certificate", "certificate"), ("private_key", "private_key")):
        overrides.setdefault(
            f"nginx_basic_auth_tls_served_{served}", resolve(NGINX, f"nginx_basic_auth_tls_{own}")
        )
    site = render(NGINX, "mlflow.conf.j2", **overrides)
    for variable, template in (
        ("nginx_basic_auth_credentials_map", "credentials.conf.j2"),
        ("nginx_basic_auth_metrics_locations", "metrics.conf.j2"),
    ):
        include = f"include {resolve(NGINX, variable)};"
        assert include in site, f"the site must include {template}"
        site = site.replace(include, render(NGINX, template, **overrides))
    return parse(site)


def servers(root: Directive) -> dict[str, Directive]:
    """Server blocks by the port they listen on."""
    found: dict[str, Directive] = {}
    for server in root.children("server"):
        for listen in server.children("listen"):
            port = listen.args[0].rsplit(":", 1)[-1].removeprefix("[::]")
            found.setdefault(port, server)
            assert found[port] is server, f"two server blocks listen on {port}"
    return found


SITE_VARIANTS = [
    pytest.param({}, id="defaults"),
    pytest.param({"nginx_basic_auth_rate_limit": 0}, id="no-guessing-limit"),
    pytest.param({"nginx_basic_auth_listen_ipv6": True}, id="ipv6"),
    pytest.param({"nginx_basic_auth_users": []}, id="no-users"),
]


@pytest.mark.parametrize("overrides", SITE_VARIANTS)
def test_every_location_proxied_to_mlflow_needs_a_password_except_health(
    overrides: dict[str, Any],
) -> None:
    root = nginx_site(**overrides)
    https = servers(root)["443"]
    proxied = {" ".join(loc.args): loc for loc in locations(https) if loc.value("proxy_pass")}

    anonymous = {path for path, loc in proxied.items() if not password_required(root, loc)}

    assert anonymous == ANONYMOUS_PROXIED
    assert "/" in proxied, "MLflow itself must be proxied (location /)"
    assert https.value("proxy_pass") is None, "a server-wide proxy_pass would bypass locations"
    assert https.value("return") is None


@pytest.mark.parametrize("overrides", SITE_VARIANTS)
def test_http_only_redirects_and_serves_acme_challenges(overrides: dict[str, Any]) -> None:
    root = nginx_site(**overrides)
    http = servers(root)["80"]

    assert http.value("return") is None
    for location in locations(http):
        assert location.value("proxy_pass") is None, f"port 80 proxies {location.args}"
        redirect = location.value("return")
        if redirect is not None:
            assert redirect == ["301", "https://$host$request_uri"]
        else:
            assert location.args == ["^~", "/.well-known/acme-challenge/"]
            assert location.value("root") == [resolve(NGINX, "nginx_basic_auth_acme_webroot")]
    assert [loc.args for loc in locations(http) if loc.value("return")] == [["/"]]


def test_nginx_listens_only_on_the_redirect_and_tls_ports() -> None:
    root = nginx_site(nginx_basic_auth_listen_ipv6=True)

    assert set(servers(root)) == {"80", "443"}
    for listen in servers(root)["443"].children("listen"):
        assert "ssl" in listen.args, f"443 without TLS: {listen.args}"


def test_the_fast_path_opens_only_for_a_users_own_valid_authorization_header() -> None:
    """secure_link turns the password check off only when the request's Authorization header
    hashes to the digest the map holds for the user it names, and the map holds exactly the
    digests of the right passwords."""
    root = nginx_site()
    source, digests = map_entries(root, "$mlflow_credential_md5")

    def header_digest(name: str, password: str) -> str:
        header = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        md5 = hashlib.md5(header.encode()).digest()  # noqa: S324 (nginx's secure_link_md5)
        return base64.urlsafe_b64encode(md5).decode().rstrip("=")

    assert source == "$remote_user"
    assert digests == {
        "default": "",
        **{user["name"]: header_digest(user["name"], user["password"]) for user in USERS},
    }
    assert header_digest("alice", "a-wrong-password-of-16+") not in digests.values()


def test_password_guessing_is_paced_before_the_password_check() -> None:
    root = nginx_site()
    mlflow = next(loc for loc in locations(servers(root)["443"]) if loc.args == ["/"])
    source, keys = map_entries(root, "$mlflow_unverified_client")
    zone = next(d for d in root.children("limit_req_zone") if "zone=mlflow_guesses:10m" in d.args)

    assert inherited(mlflow, "limit_req") == ["zone=mlflow_guesses", "burst=20", "delay=10"]
    assert inherited(mlflow, "limit_req_status") == ["429"]
    assert zone.args[0] == "$mlflow_unverified_client"
    assert "rate=2r/s" in zone.args
    # Only requests secure_link found valid go unlimited (an empty key is never limited).
    assert (source, keys) == ("$secure_link", {"1": "", "default": "$binary_remote_addr"})


def test_tls_settings_reach_nginx() -> None:
    https = servers(nginx_site())["443"]

    assert https.value("ssl_protocols") == ["TLSv1.2", "TLSv1.3"]
    assert https.value("ssl_ciphers") == [":".join(MOZILLA_INTERMEDIATE_ECDHE)]
    assert https.value("ssl_session_tickets") == ["off"]
    headers = [d.args for d in https.children("add_header")]
    assert ["Strict-Transport-Security", "max-age=63072000", "always"] in headers
    assert ["Authorization", ""] in [d.args for d in https.children("proxy_set_header")], (
        "the user's password must not be forwarded to MLflow"
    )


ROLE_USERS = [
    {"name": "alice", "password": "correct-horse-battery-staple-1"},
    {"name": "viewer", "password": "Tr0ub4dor&3-but-longer-now", "role": "read"},
    {"name": "prom", "password": "scrape-scrape-scrape-1234", "role": "metrics"},
]


def test_metrics_locations_answer_only_users_with_role_metrics() -> None:
    root = nginx_site(nginx_basic_auth_users=ROLE_USERS)
    https = servers(root)["443"]
    metrics = {" ".join(loc.args): loc for loc in locations(https) if "/metrics" in loc.args[-1]}
    assert set(metrics) == {"= /metrics", "= /metrics/nginx"}
    for location in metrics.values():
        assert password_required(root, location)
        assert location.value("auth_basic_user_file") == [
            resolve(NGINX, "nginx_basic_auth_metrics_htpasswd_file")
        ]
        # Another user's valid credentials skip the hash there, so they must be refused first.
        refused = [d for d in location.children("if") if d.args == ["($mlflow_metrics_refused)"]]
        assert refused
        assert refused[0].value("return") == ["403"]
    assert map_entries(root, "$mlflow_metrics_role")[1] == {"default": "0", "prom": "1"}
    # Metrics users cannot use MLflow: not in the site's map of valid credentials (nor its file).
    assert set(map_entries(root, "$mlflow_credential_md5")[1]) == {"default", "alice", "viewer"}


def test_readers_are_checked_after_the_password_and_denied_by_default() -> None:
    root = nginx_site(nginx_basic_auth_users=ROLE_USERS)
    https = servers(root)["443"]
    mlflow = next(loc for loc in locations(https) if loc.args == ["/"])
    assert password_required(root, mlflow)
    assert mlflow.value("auth_request") == ["/_mlflow_role_allows"]
    check = next(loc for loc in locations(https) if loc.args == ["=", "/_mlflow_role_allows"])
    assert check.value("internal") == []
    assert check.value("proxy_pass") is None
    assert map_entries(root, "$mlflow_user_role")[1] == {
        "default": "",
        "alice": "write",
        "viewer": "read",
    }
    assert map_entries(root, "$mlflow_request_allowed")[1] == {
        "write": "1",
        "read": "$mlflow_read_request",
        "default": "0",
    }


# --- pinned role defaults --------------------------------------------------------------------
MOZILLA_INTERMEDIATE_ECDHE = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
]
PINNED = {
    NGINX: {
        # Salted and not MD5-based; apr_md5_crypt is accepted as a choice, never the default.
        "nginx_basic_auth_hash_scheme": "sha512_crypt",
        "nginx_basic_auth_hash_rounds": 5000,
        "nginx_basic_auth_exclusive": True,
        "nginx_basic_auth_tls_protocols": "TLSv1.2 TLSv1.3",
        "nginx_basic_auth_tls_ciphers": ":".join(MOZILLA_INTERMEDIATE_ECDHE),
        "nginx_basic_auth_tls_ecdh_curves": "X25519:prime256v1:secp384r1",
        "nginx_basic_auth_tls_selfsigned_days": 365,
        "nginx_basic_auth_hsts_max_age": 63072000,
        "nginx_basic_auth_rate_limit": 2,
        "nginx_basic_auth_rate_limit_delay": 10,
        "nginx_basic_auth_rate_limit_burst": 20,
        "nginx_basic_auth_rate_limit_status": 429,
        "nginx_basic_auth_users": [],
    },
    "ssh_hardening": {
        "ssh_hardening_settings": {
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitEmptyPasswords": "no",
            "PermitRootLogin": "no",
            "PubkeyAuthentication": "yes",
            "AuthenticationMethods": "publickey",
            "MaxAuthTries": "3",
            "LoginGraceTime": "30",
            "X11Forwarding": "no",
            "AllowAgentForwarding": "no",
        },
        "ssh_hardening_extra_settings": {},
    },
    "systemd": {
        "systemd_mlflow_host": "127.0.0.1",
        "systemd_mlflow_memory_deny_write_execute": True,
    },
    "mlflow": {"mlflow_enable_job_execution": False},
}


@pytest.mark.parametrize(
    ("role", "name", "value"),
    [(role, name, value) for role, pins in PINNED.items() for name, value in pins.items()],
)
def test_security_relevant_default_is_pinned(role: str, name: str, value: Any) -> None:
    assert role_defaults(role)[name] == value, f"{role}: defaults/main.yml {name}"
    specs = argument_spec_defaults(role)
    assert specs.get(name, value) == value, f"{role}: meta/argument_specs.yml {name}"


def test_only_strong_ciphers_are_offered() -> None:
    for cipher in MOZILLA_INTERMEDIATE_ECDHE:
        assert cipher.startswith("ECDHE-"), "forward secrecy"
        assert cipher.endswith(("GCM-SHA256", "GCM-SHA384", "CHACHA20-POLY1305")), "AEAD only"


# --- ssh ---------------------------------------------------------------------------------------
def test_sshd_drop_in_is_key_only_and_read_first() -> None:
    lines = render("ssh_hardening", "sshd_hardening.conf.j2").splitlines()
    settings = dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))
    dropin = resolve("ssh_hardening", "ssh_hardening_dropin_file")
    required = resolve("ssh_hardening", "ssh_hardening_required_lines")

    assert settings == PINNED["ssh_hardening"]["ssh_hardening_settings"]
    # sshd keeps the first value it reads; cloud-init writes 50-cloud-init.conf.
    assert dropin.startswith("/etc/ssh/sshd_config.d/")
    assert dropin.rsplit("/", 1)[1] < "50-cloud-init.conf"
    for name in ("PasswordAuthentication", "KbdInteractiveAuthentication", "PermitRootLogin"):
        assert f"{name.lower()} no" in required, f"{name} is checked against sshd -T"


# --- MLflow itself -----------------------------------------------------------------------------
def test_mlflow_listens_on_the_loopback_only_and_sandboxed() -> None:
    unit = render("systemd", "mlflow.service.j2").splitlines()

    exec_start = next(line for line in unit if line.startswith("ExecStart="))
    assert " server --host 127.0.0.1 --port 5000" in exec_start
    for line in ("NoNewPrivileges=yes", "UMask=0077", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert line in unit


def test_mlflow_environment_keeps_the_password_out_of_the_uri() -> None:
    env = render(
        "mlflow",
        "mlflow.env.j2",
        mlflow_db_dsn="postgresql://mlflow:s3cret-DB-pass@db.internal:5432/mlflow",
        mlflow_artifacts_destination="s3://team-bucket/artifacts",
    )
    lines = [line.split("=", 1) for line in env.splitlines() if line and line[0] != "#"]
    values = {name: value.strip("'\"") for name, value in lines}  # systemd's quoting

    assert "s3cret" not in values["MLFLOW_BACKEND_STORE_URI"]
    assert values["PGPASSWORD"] == "s3cret-DB-pass"
    assert values["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # Host headers: the server's own names (any port on the loopback), never any host.
    allowed = values["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert PLAY_VARIABLES["mlflow_public_dns"] in allowed
    assert not [host for host in allowed if host.startswith("*") or host.endswith(".*")]
    assert "*" not in values["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    assert not any(name.startswith(("AWS_ACCESS", "AWS_SECRET")) for name in values)


def test_extra_server_names_default_to_the_stack_domain_only() -> None:
    # A derived default since the tls branch (setting domain): no other names, never a wildcard.
    assert resolve("mlflow", "mlflow_extra_server_names") == []
    assert resolve("mlflow", "mlflow_extra_server_names", mlflow_domain="") == []
    assert resolve("mlflow", "mlflow_extra_server_names", mlflow_domain="mlflow.example.com") == [
        "mlflow.example.com"
    ]
    assert "mlflow_extra_server_names" not in argument_spec_defaults("mlflow")
