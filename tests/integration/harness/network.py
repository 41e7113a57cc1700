"""The test network: bridge mlfa0 (10.77.0.1/24), one netns + veth per host, masquerade.

Every object has a fixed name so `down` can find and remove it even after a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .util import quiet, run, say

BRIDGE = "mlfa0"
GATEWAY = "10.77.0.1"
PREFIX_LEN = 24
SUBNET = "10.77.0.0/24"
NFT_TABLE = "mlflow_testhosts"
VETH_PREFIX = "mlfa-h"  # host-side veth names: mlfa-h1, mlfa-h2, ...
NETNS_DIR = Path("/run/netns")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

# Hosts may leave the test network only for DNS, HTTP and HTTPS (package mirrors, PyPI);
# masquerade makes that traffic look like the machine's own, as NAT does for an EC2 instance.
NFT_RULESET = f"""\
table ip {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET} oifname != "{BRIDGE}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ip saddr {SUBNET} oifname != "{BRIDGE}" meta l4proto {{ tcp, udp }} \
            th dport {{ 53, 80, 443 }} accept
        ip saddr {SUBNET} oifname != "{BRIDGE}" drop
    }}
}}
"""


@dataclass(frozen=True)
class HostAddress:
    """Network identity of host number `index` (1-based)."""

    index: int

    @property
    def ip(self) -> str:
        return f"10.77.0.{10 + self.index}"

    @property
    def mac(self) -> str:
        # Fixed MACs: with random ones a restarted host stayed unreachable while the bridge
        # still held the old MAC for its IP (measured: 47 s).
        return f"02:77:00:00:00:{10 + self.index:02x}"

    @property
    def host_side_mac(self) -> str:
        return f"02:77:00:00:01:{10 + self.index:02x}"

    @property
    def veth(self) -> str:
        return f"{VETH_PREFIX}{self.index}"


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def uplink_mtu() -> int:
    """MTU of the machine's default-route device: hosts must not send bigger packets out."""
    routes = json.loads(run(["ip", "-j", "route", "show", "default"]).stdout or "[]")
    for route in routes:
        mtu_file = Path("/sys/class/net", route.get("dev", ""), "mtu")
        if route.get("dev") and mtu_file.exists():
            return min(int(mtu_file.read_text()), 1500)
    return 1500


def read_ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


def create_bridge(mtu: int) -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/{PREFIX_LEN}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "mtu", str(mtu), "up"])


def enable_forwarding() -> None:
    """ip_forward=1 and our own nft table (replaced whole, so re-running is harmless)."""
    IP_FORWARD.write_text("1\n")
    quiet(["nft", "delete", "table", "ip", NFT_TABLE])
    run(["nft", "-f", "-"], input_text=NFT_RULESET)


def create_host_link(name: str, addr: HostAddress, mtu: int) -> None:
    """Netns `name` with eth0 (fixed MAC and IP, default route via the bridge)."""
    if not (NETNS_DIR / name).exists():
        run(["ip", "netns", "add", name])
    if not link_exists(addr.veth):
        run(
            [
                *("ip", "link", "add", addr.veth, "address", addr.host_side_mac, "mtu", str(mtu)),
                *("type", "veth", "peer", "name", "eth0", "address", addr.mac, "mtu", str(mtu)),
                *("netns", name),
            ]
        )
    run(["ip", "link", "set", addr.veth, "master", BRIDGE, "up"])
    ns = ["ip", "-n", name]
    run([*ns, "link", "set", "lo", "up"])
    run([*ns, "link", "set", "eth0", "up"])
    run([*ns, "addr", "replace", f"{addr.ip}/{PREFIX_LEN}", "dev", "eth0"])
    run([*ns, "route", "replace", "default", "via", GATEWAY])
    flush_neighbour(addr)


def flush_neighbour(addr: HostAddress) -> None:
    """Forget a cached MAC for the host's IP (done on every (re)start)."""
    quiet(["ip", "neigh", "flush", "to", addr.ip, "dev", BRIDGE])


def remove_host_link(name: str, veth: str) -> None:
    # `ip netns del` once left the host-side veth behind: delete it explicitly too.
    if veth and link_exists(veth):
        quiet(["ip", "link", "del", veth])
    if (NETNS_DIR / name).exists():
        quiet(["ip", "netns", "del", name])


def leftover_netns(prefix: str) -> list[str]:
    return sorted(p.name for p in NETNS_DIR.glob(f"{prefix}*")) if NETNS_DIR.exists() else []


def leftover_veths() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").glob(f"{VETH_PREFIX}*"))


def nft_table_exists() -> bool:
    return quiet(["nft", "list", "table", "ip", NFT_TABLE])


def remove_network(netns_prefix: str, ip_forward_before: str | None) -> None:
    """Remove every netns/veth with our names, the bridge and the nft table; restore forwarding."""
    for name in leftover_netns(netns_prefix):
        remove_host_link(name, "")
    for veth in leftover_veths():
        quiet(["ip", "link", "del", veth])
    if link_exists(BRIDGE):
        quiet(["ip", "link", "del", BRIDGE])
    if nft_table_exists():
        quiet(["nft", "delete", "table", "ip", NFT_TABLE])
    if ip_forward_before is not None and read_ip_forward() != ip_forward_before:
        IP_FORWARD.write_text(ip_forward_before + "\n")
        say(f"restored net.ipv4.ip_forward={ip_forward_before}")
