"""Test bed slots: every machine-wide name and address of a bed, derived from one number.

Several beds can run on one machine (parallel developers, benchmarks beside tests) when each
uses its own slot (env MLFLOW_AWS_TESTBED_SLOT, 0..9, default 0). Slot 0 keeps the original
names and addresses, so CI and existing beds are unaffected; slot N gets bridge mlfaN,
10.77.N.0/24, its own ports, nft table, cgroup group, run dir and host names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .util import HarnessError

ENV_VAR = "MLFLOW_AWS_TESTBED_SLOT"
SLOTS = range(10)  # one digit: keeps interface names short and the subnets in 10.77.0-9.0/24
# Machine-wide, for what all slots share: package installs and the ip_forward bookkeeping.
GLOBAL_LOCK = Path("/run/mlflow-aws-testhosts-lock")


@dataclass(frozen=True)
class Slot:
    number: int

    def __post_init__(self) -> None:
        if self.number not in SLOTS:
            raise HarnessError(f"{ENV_VAR} must be an integer 0..9, not {self.number!r}")

    @property
    def suffix(self) -> str:
        """Appended to names and folders of the slot: empty for slot 0."""
        return str(self.number) if self.number else ""

    # ----- network ---------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"mlfa{self.number}"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.number}.1"

    @property
    def subnet(self) -> str:
        return f"10.77.{self.number}.0/24"

    def host_ip(self, index: int) -> str:
        return f"10.77.{self.number}.{10 + index}"

    def host_mac(self, index: int, host_side: bool = False) -> str:
        # Fixed MACs (see network.py), unique across slots as all bridges share the machine.
        return f"02:77:{self.number:02x}:00:{int(host_side):02x}:{10 + index:02x}"

    @property
    def veth_prefix(self) -> str:
        # Interface names have at most 15 characters: mlfa9h50 is 8.
        return f"mlfa{self.number}h" if self.number else "mlfa-h"

    @property
    def nft_table(self) -> str:
        return f"mlflow_testhosts{self.suffix}"

    # ----- hosts and processes ---------------------------------------------------------

    @property
    def host_prefix(self) -> str:
        # Also the netns name and the hostname: short (mlflow-t9-50), and no prefix of another
        # slot's, so globbing one slot's leftovers never matches another's.
        return f"mlflow-t{self.number}-" if self.number else "mlflow-test-"

    @property
    def cgroup_group(self) -> str:
        return f"mlflow-testhosts{self.suffix}"

    @property
    def run_dir(self) -> Path:
        """Owner file, per-slot lock and ip_forward_before (tmpfs: gone after a reboot)."""
        return Path(f"/run/mlflow-aws-testhosts{self.suffix}")

    @property
    def pg_port(self) -> int:
        return 55432 + 10 * self.number

    @property
    def s3_port(self) -> int:
        return 55900 + 10 * self.number

    @property
    def acme_port(self) -> int:
        """The ACME test server (pebble): directory, +1 its management (roots), +2 its DNS."""
        return 56000 + 10 * self.number

    def with_suffix(self, path: Path) -> Path:
        """A per-checkout default dir for this slot: .cache/testhosts -> .cache/testhosts3."""
        return path.with_name(path.name + self.suffix)


def from_env() -> Slot:
    """The slot named by MLFLOW_AWS_TESTBED_SLOT (0 when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip() or "0"
    if not (value.isascii() and value.isdigit()):
        raise HarnessError(f"{ENV_VAR} must be an integer 0..9, not {value!r}")
    return Slot(int(value))


def other_slots(slot: Slot) -> list[Slot]:
    return [Slot(n) for n in SLOTS if n != slot.number]
