"""The values the roles derive (ansible/filter_plugins/mlflow_aws.py)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.ansible.source_file import load

plugin = load("mlflow_aws_filters", "ansible/filter_plugins/mlflow_aws.py")
FILTERS = plugin.FilterModule().filters()

# What ansible_memtotal_mb reports on instances of 1, 2, 4, 8 and 16 GiB (the kernel keeps some).
GIB_1, GIB_2, GIB_4, GIB_8, GIB_16 = 904, 1910, 3828, 7816, 15790


@pytest.mark.parametrize(
    ("memtotal_mb", "vcpus", "workers"),
    [
        (GIB_1, 2, 1),  # t3.micro: 1 worker (~715 MB) is all that fits beside the OS
        (GIB_2, 2, 2),  # t3.small
        (GIB_4, 2, 2),  # t3.medium: memory for 5, capped by the 2 vCPUs
        (GIB_8, 2, 2),
        (GIB_8, 4, 4),
        (GIB_16, 4, 4),
        (GIB_16, 8, 8),
        (GIB_16, 64, 26),  # memory caps a many-core host
        (GIB_4, 16, 5),
        (512, 1, 1),  # never below one worker
    ],
)
def test_workers_fit_in_memory_and_cpus(memtotal_mb: int, vcpus: int, workers: int) -> None:
    assert FILTERS["mlflow_workers"](memtotal_mb, vcpus) == workers


def test_workers_leave_30_percent_of_memory_free() -> None:
    for memtotal_mb in range(1024, 65536, 512):
        workers = plugin.mlflow_workers(memtotal_mb, 1024)
        used = plugin.BASE_MB + workers * plugin.PER_WORKER_MB
        assert workers == 1 or used <= 0.7 * memtotal_mb


def test_workers_accept_fact_strings() -> None:
    assert plugin.mlflow_workers("3828", "2") == 2


@pytest.mark.parametrize(("memtotal_mb", "vcpus"), [(0, 2), (2048, 0), ("lots", 2), (None, 2)])
def test_workers_reject_bad_facts(memtotal_mb: Any, vcpus: Any) -> None:
    with pytest.raises(AnsibleFilterError, match="mlflow_workers"):
        plugin.mlflow_workers(memtotal_mb, vcpus)


def test_allowed_hosts_for_dns_and_ip() -> None:
    hosts = FILTERS["mlflow_allowed_hosts"](
        ["ec2-203-0-113-10.eu-west-1.compute.amazonaws.com", "203.0.113.10"]
    )

    assert hosts[:2] == ["ec2-203-0-113-10.eu-west-1.compute.amazonaws.com", "203.0.113.10"]
    # Setting --allowed-hosts replaces MLflow's defaults: loopback must stay allowed.
    for local in ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"):
        assert local in hosts


def test_allowed_hosts_for_ip_only() -> None:
    hosts = plugin.mlflow_allowed_hosts(["", "203.0.113.10", None])

    assert hosts[0] == "203.0.113.10"
    assert "" not in hosts


def test_allowed_hosts_are_unique_and_lowercase() -> None:
    hosts = plugin.mlflow_allowed_hosts(["MLflow.Example.com", "mlflow.example.com", "localhost"])

    assert hosts.count("mlflow.example.com") == 1
    assert hosts.count("localhost") == 1


def test_allowed_hosts_bracket_ipv6() -> None:
    assert plugin.mlflow_allowed_hosts(["2001:db8::1"])[0] == "[2001:db8::1]"


def test_allowed_hosts_match_like_mlflow_does() -> None:
    """MLflow matches Host headers with fnmatch when a pattern has '*', else exactly."""
    from fnmatch import fnmatch

    hosts = plugin.mlflow_allowed_hosts(["mlflow.example.com", "203.0.113.10"])

    def allowed(host: str) -> bool:
        return any(fnmatch(host, h) if "*" in h else host == h for h in hosts)

    assert allowed("mlflow.example.com")
    assert allowed("203.0.113.10")
    assert allowed("127.0.0.1:5000")
    assert allowed("localhost:5000")
    assert allowed("[::1]:5000")
    assert not allowed("evil.example.net")
    assert not allowed("10.0.1.10")


def test_needs_a_name() -> None:
    with pytest.raises(AnsibleFilterError, match="at least one"):
        plugin.mlflow_allowed_hosts(["", None])


def test_cors_origins_for_dns_and_ip() -> None:
    origins = FILTERS["mlflow_cors_origins"](
        ["ec2-203-0-113-10.eu-west-1.compute.amazonaws.com", "203.0.113.10"]
    )

    assert origins == [
        "https://ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
        "https://203.0.113.10",
    ]


def test_cors_origins_for_ip_only() -> None:
    assert plugin.mlflow_cors_origins("203.0.113.10") == ["https://203.0.113.10"]


def test_dsn_without_password_keeps_everything_else() -> None:
    dsn = "postgresql://mlflow:S3cr%40t%2Fpw@db.example.internal:5432/mlflow?sslmode=require"

    assert (
        FILTERS["mlflow_dsn_without_password"](dsn)
        == "postgresql+psycopg2://mlflow@db.example.internal:5432/mlflow?sslmode=require"
    )
    assert FILTERS["mlflow_dsn_password"](dsn) == "S3cr@t/pw"


def test_dsn_without_port_or_password() -> None:
    dsn = "postgres://mlflow@db/mlflow"

    assert plugin.mlflow_dsn_without_password(dsn) == "postgresql+psycopg2://mlflow@db/mlflow"
    assert plugin.mlflow_dsn_password(dsn) == ""


def test_dsn_keeps_an_explicit_driver() -> None:
    dsn = "postgresql+psycopg2://mlflow:pw@db:5432/mlflow"

    assert plugin.mlflow_dsn_without_password(dsn) == "postgresql+psycopg2://mlflow@db:5432/mlflow"


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        None,
        "mysql://u:p@h/db",
        "postgresql://u:secretpw@/db",
        "postgresql://u:secretpw@h",
        "postgresql://:secretpw@h/db",
        "postgresql://u:secretpw@h:port/db",
    ],
)
def test_bad_dsn_fails_without_showing_it(dsn: Any) -> None:
    with pytest.raises(AnsibleFilterError, match="mlflow_db_dsn") as error:
        plugin.mlflow_dsn_without_password(dsn)

    assert "secretpw" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("$HOME `x`", '"\\$HOME \\`x\\`"'),
        ("it's", '"it\'s"'),
    ],
)
def test_systemd_env_quote(value: str, quoted: str) -> None:
    assert FILTERS["systemd_env_quote"](value) == quoted


def test_systemd_env_quote_rejects_newlines() -> None:
    with pytest.raises(AnsibleFilterError, match="newlines"):
        plugin.systemd_env_quote("a\nb")


def test_nginx_credential_digest_is_what_secure_link_computes() -> None:
    # echo -n "Basic $(echo -n team:s3cret | base64)" | openssl md5 -binary | base64 \
    #   | tr +/ -_ | tr -d =
    assert FILTERS["nginx_credential_digest"]("team", "s3cret") == "9m664XEXdwakQRW4AzKoJw"
    assert FILTERS["nginx_credential_digest"]("team", "other") != "9m664XEXdwakQRW4AzKoJw"


@pytest.mark.parametrize(("name", "password"), [("", "pw"), ("a:b", "pw"), ("team", None)])
def test_nginx_credential_digest_refuses_bad_credentials(name: str, password: object) -> None:
    with pytest.raises(AnsibleFilterError, match="needs a user name"):
        FILTERS["nginx_credential_digest"](name, password)


def test_users_by_role_defaults_to_write_and_lists_every_role() -> None:
    users = [
        {"name": "team", "password": "a"},
        {"name": "prom", "password": "b", "role": "metrics"},
        {"name": "ci", "password": "c", "role": "write"},
        {"name": "viewer", "password": "d", "role": "read"},
    ]
    grouped = FILTERS["mlflow_users_by_role"](users)
    assert set(grouped) == {"write", "read", "metrics"}
    assert [u["name"] for u in grouped["write"]] == ["team", "ci"]
    assert grouped["read"] == [{"name": "viewer", "password": "d"}]
    assert grouped["metrics"] == [{"name": "prom", "password": "b"}]
    assert FILTERS["mlflow_users_by_role"]([]) == {"write": [], "read": [], "metrics": []}


@pytest.mark.parametrize(
    ("users", "message"),
    [
        (
            [{"name": "prom", "role": "admin"}],
            "user prom: role 'admin' is not one of write, read, metrics",
        ),
        ([{"role": "metrics"}], "every user needs a name"),
        ("team", "needs a list of users"),
    ],
)
def test_users_by_role_refuses_unknown_roles(users: Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        FILTERS["mlflow_users_by_role"](users)


def test_dsn_with_login_replaces_user_and_password() -> None:
    dsn = "postgresql://master:secret@db.internal:5432/mlflow"
    login = {"user": "mlflow_a", "password": "p@ss/word"}
    assert (
        FILTERS["mlflow_dsn_with_login"](dsn, login)
        == "postgresql://mlflow_a:p%40ss%2Fword@db.internal:5432/mlflow"
    )
    assert FILTERS["mlflow_dsn_with_login"](dsn, {}) == dsn
    with pytest.raises(AnsibleFilterError, match="needs a user and a password"):
        FILTERS["mlflow_dsn_with_login"](dsn, {"user": "mlflow_a"})


# ---------------------------------------------------------------- certbot_failure

LOG = "Saving debug log to /var/log/letsencrypt/letsencrypt.log"
HELP = (
    "Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile "
    "/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details."
)
CERTBOT_REFUSED = "\n".join([
    LOG,
    "An unexpected error occurred:",
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='10.77.8.1', port=56080): "
    "Max retries exceeded with url: /dir (Caused by NewConnectionError(\"Failed to establish a "
    "new connection: [Errno 111] Connection refused\"))",
    HELP,
])  # fmt: skip
CERTBOT_CHALLENGE = "\n".join([
    LOG,
    "Requesting a certificate for 203.0.113.10",
    "",
    "Certbot failed to authenticate some domains (authenticator: webroot). The Certificate "
    "Authority reported these problems:",
    "  Identifier: 203.0.113.10",
    "  Type: connection",
    "  Detail: 203.0.113.10: Fetching http://203.0.113.10/.well-known/acme-challenge/x: "
    "Timeout during connect (likely firewall problem)",
    "",
    "Hint: The Certificate Authority failed to download the temporary challenge files.",
    "Some challenges have failed.",
    HELP,
])  # fmt: skip


def test_certbot_failure_is_one_line_with_the_reason() -> None:
    reason = FILTERS["certbot_failure"]({"rc": 1, "stderr": CERTBOT_REFUSED, "stdout": ""})
    assert "\n" not in reason
    assert len(reason) <= 300
    assert reason.startswith("requests.exceptions.ConnectionError: HTTPSConnectionPool")
    assert "Saving debug log" not in reason
    assert "Ask for help" not in reason


def test_certbot_failure_names_the_failed_challenge() -> None:
    reason = FILTERS["certbot_failure"]({"rc": 1, "stderr": CERTBOT_CHALLENGE, "stdout": ""})
    assert "\n" not in reason
    assert "Identifier: 203.0.113.10; Type: connection; Detail:" in reason
    assert "Hint:" not in reason


def test_certbot_failure_after_the_timeout() -> None:
    reason = FILTERS["certbot_failure"]({"rc": 124, "stderr": "", "stdout": ""}, 180)
    assert reason == "the ACME server gave no certificate within 180 s"


def test_certbot_failure_needs_a_result() -> None:
    with pytest.raises(AnsibleFilterError):
        FILTERS["certbot_failure"]("failed")
