"""The test network of a slot: bridge (10.77.N.1/24), one netns + veth per host, masquerade.

Every object has a fixed name (see slot.py) so `down` can find and remove it even after a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .slot import Slot
from .util import quiet, run, say

PREFIX_LEN = 24
NETNS_DIR = Path("/run/netns")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def nft_ruleset(slot: Slot) -> str:
    """The slot's nft table: masquerade, and forwarding out only for DNS, HTTP and HTTPS.

    Hosts reach package mirrors and PyPI and nothing else; masquerade makes that traffic look
    like the machine's own, as NAT does for an EC2 instance. Another slot's bridge counts as
    "out" too, so beds in different slots cannot reach each other's hosts.
    """
    table, subnet, bridge = slot.nft_table, slot.subnet, slot.bridge
    return f"""\
table ip {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != "{bridge}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ip saddr {subnet} oifname != "{bridge}" meta l4proto {{ tcp, udp }} \
            th dport {{ 53, 80, 443 }} accept
        ip saddr {subnet} oifname != "{bridge}" drop
    }}
}}
"""


@dataclass(frozen=True)
class HostAddress:
    """Network identity of host number `index` (1-based) in `slot`."""

    index: int
    slot: Slot

    @property
    def ip(self) -> str:
        return self.slot.host_ip(self.index)

    @property
    def mac(self) -> str:
        # Fixed MACs: with random ones a restarted host stayed unreachable while the bridge
        # still held the old MAC for its IP (measured: 47 s).
        return self.slot.host_mac(self.index)

    @property
    def host_side_mac(self) -> str:
        return self.slot.host_mac(self.index, host_side=True)

    @property
    def veth(self) -> str:
        return f"{self.slot.veth_prefix}{self.index}"


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


def create_bridge(slot: Slot, mtu: int) -> None:
    if not link_exists(slot.bridge):
        run(["ip", "link", "add", slot.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{slot.gateway}/{PREFIX_LEN}", "dev", slot.bridge])
    run(["ip", "link", "set", slot.bridge, "mtu", str(mtu), "up"])


def enable_forwarding(slot: Slot) -> None:
    """ip_forward=1 and the slot's own nft table (replaced whole, so re-running is harmless)."""
    IP_FORWARD.write_text("1\n")
    quiet(["nft", "delete", "table", "ip", slot.nft_table])
    run(["nft", "-f", "-"], input_text=nft_ruleset(slot))


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
    run(["ip", "link", "set", addr.veth, "master", addr.slot.bridge, "up"])
    ns = ["ip", "-n", name]
    run([*ns, "link", "set", "lo", "up"])
    run([*ns, "link", "set", "eth0", "up"])
    run([*ns, "addr", "replace", f"{addr.ip}/{PREFIX_LEN}", "dev", "eth0"])
    run([*ns, "route", "replace", "default", "via", addr.slot.gateway])
    flush_neighbour(addr)


def flush_neighbour(addr: HostAddress) -> None:
    """Forget a cached MAC for the host's IP (done on every (re)start)."""
    quiet(["ip", "neigh", "flush", "to", addr.ip, "dev", addr.slot.bridge])


def remove_host_link(name: str, veth: str) -> None:
    # `ip netns del` once left the host-side veth behind: delete it explicitly too.
    if veth and link_exists(veth):
        quiet(["ip", "link", "del", veth])
    if (NETNS_DIR / name).exists():
        quiet(["ip", "netns", "del", name])


def leftover_netns(slot: Slot) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.glob(f"{slot.host_prefix}*"))


def leftover_veths(slot: Slot) -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").glob(f"{slot.veth_prefix}*"))


def nft_table_exists(slot: Slot) -> bool:
    return quiet(["nft", "list", "table", "ip", slot.nft_table])


def remove_network(slot: Slot, ip_forward_before: str | None) -> None:
    """Remove the slot's netns/veths, bridge and nft table; restore forwarding when given."""
    for name in leftover_netns(slot):
        remove_host_link(name, "")
    for veth in leftover_veths(slot):
        quiet(["ip", "link", "del", veth])
    if link_exists(slot.bridge):
        quiet(["ip", "link", "del", slot.bridge])
    if nft_table_exists(slot):
        quiet(["nft", "delete", "table", "ip", slot.nft_table])
    if ip_forward_before is not None and read_ip_forward() != ip_forward_before:
        IP_FORWARD.write_text(ip_forward_before + "\n")
        say(f"restored net.ipv4.ip_forward={ip_forward_before}")
