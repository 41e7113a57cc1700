"""Test bed slots (standin/slot.py): names, addresses, validation, locking.

No root needed: nothing here creates a device, a mount or a process.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from standin import Testbed, default_state_dir, network, rootfs, testbed
from standin.__main__ import parse_args
from standin.services import pg_conf, pg_hba
from standin.slot import ENV_VAR, SLOTS, Slot, from_env
from standin.util import REPO_ROOT, HarnessError

# Slot 0's nft table: names without a slot suffix.
SLOT_0_NFT_RULESET = """\
table ip mlflow_testhosts {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.77.0.0/24 oifname != "mlfa0" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        ip saddr 10.77.0.0/24 oifname != "mlfa0" meta l4proto { tcp, udp } \
            th dport { 53, 80, 443 } accept
        ip saddr 10.77.0.0/24 oifname != "mlfa0" drop
    }
}
"""


def test_slot_0_names_and_addresses_have_no_suffix() -> None:
    slot = Slot(0)
    assert (slot.bridge, slot.gateway, slot.subnet) == ("mlfa0", "10.77.0.1", "10.77.0.0/24")
    assert [slot.host_ip(i) for i in (1, 2)] == ["10.77.0.11", "10.77.0.12"]
    address = network.HostAddress(1, slot)
    assert (address.mac, address.host_side_mac) == ("02:77:00:00:00:0b", "02:77:00:00:01:0b")
    assert address.veth == "mlfa-h1"
    assert (slot.pg_port, slot.s3_port) == (55432, 55900)
    assert slot.nft_table == "mlflow_testhosts"
    assert network.nft_ruleset(slot) == SLOT_0_NFT_RULESET
    assert slot.host_prefix == "mlflow-test-"
    assert slot.cgroup_group == "mlflow-testhosts"
    assert slot.run_dir == Path("/run/mlflow-aws-testhosts")
    assert default_state_dir(slot) == REPO_ROOT / ".cache" / "testhosts"
    assert "listen_addresses = '10.77.0.1,127.0.0.1'\nport = 55432\n" in pg_conf(slot)
    assert "host mlflow all 10.77.0.0/24 scram-sha-256" in pg_hba(slot)


def test_slot_3_has_its_own_names_and_addresses(tmp_path: Path) -> None:
    slot = Slot(3)
    assert (slot.bridge, slot.gateway, slot.subnet) == ("mlfa3", "10.77.3.1", "10.77.3.0/24")
    assert slot.host_ip(1) == "10.77.3.11"
    address = network.HostAddress(2, slot)
    assert (address.mac, address.host_side_mac) == ("02:77:03:00:00:0c", "02:77:03:00:01:0c")
    assert address.veth == "mlfa3h2"
    assert (slot.pg_port, slot.s3_port) == (55462, 55930)
    assert slot.nft_table == "mlflow_testhosts3"
    assert 'oifname != "mlfa3"' in network.nft_ruleset(slot)
    assert slot.host_prefix == "mlflow-t3-"
    assert slot.cgroup_group == "mlflow-testhosts3"
    assert slot.run_dir == Path("/run/mlflow-aws-testhosts3")
    assert default_state_dir(slot) == REPO_ROOT / ".cache" / "testhosts3"
    bed = Testbed(tmp_path, slot)
    assert [h.name for h in bed._make_hosts(2)] == ["mlflow-t3-1", "mlflow-t3-2"]
    assert bed.s3.endpoint_url == "http://10.77.3.1:55930"
    assert bed.postgres.port == 55462


def test_slots_never_share_a_name_or_an_address() -> None:
    slots = [Slot(n) for n in SLOTS]
    for attribute in ("bridge", "subnet", "nft_table", "cgroup_group", "run_dir", "pg_port"):
        assert len({getattr(s, attribute) for s in slots}) == len(slots), attribute
    assert len({s.host_mac(i, side) for s in slots for i in (1, 50) for side in (0, 1)}) == 40
    ports = [p for s in slots for p in (s.pg_port, s.s3_port)]
    assert len(set(ports)) == len(ports)
    for slot in slots:
        # Interface names have 15 characters at most; leftovers are found by prefix.
        assert len(network.HostAddress(50, slot).veth) <= 15
        assert len(f"{slot.host_prefix}50") <= 15
        for other in slots:
            if other != slot:
                assert not other.host_prefix.startswith(slot.host_prefix)
                assert not other.veth_prefix.startswith(slot.veth_prefix)
                assert not other.bridge.startswith(slot.veth_prefix)


@pytest.mark.parametrize(("value", "number"), [(None, 0), ("", 0), ("0", 0), ("3", 3), ("9", 9)])
def test_slot_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, number: int
) -> None:
    if value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, value)
    assert from_env() == Slot(number)


@pytest.mark.parametrize("value", ["10", "-1", "x", "1.5", "٣", "0x1"])
def test_bad_slots_are_rejected_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(HarnessError, match=f"{ENV_VAR} must be an integer 0..9"):
        from_env()
    with pytest.raises(HarnessError, match=ENV_VAR):
        Testbed("/nonexistent")


def test_a_bed_is_refused_from_another_slot(tmp_path: Path) -> None:
    """Its names would be another bed's: `down` from the wrong slot would remove that one."""
    (tmp_path / "state.json").write_text(json.dumps({"status": "up", "slot": 2}))
    with pytest.raises(HarnessError, match=f"in slot 2, not 1: set {ENV_VAR}=2"):
        Testbed(tmp_path, Slot(1))
    assert Testbed(tmp_path, Slot(2)).slot == Slot(2)
    (tmp_path / "state.json").write_text(json.dumps({"status": "up"}))  # no slot recorded: slot 0
    with pytest.raises(HarnessError, match="in slot 0"):
        Testbed(tmp_path, Slot(1))


@pytest.mark.parametrize("argv", [["--slot", "4", "status"], ["status", "--slot", "4"]])
def test_cli_takes_a_slot_before_or_after_the_command(argv: list[str]) -> None:
    assert parse_args(argv).slot == "4"


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Run dirs, global lock and bridges of a pretend machine; records forwarding restores."""
    monkeypatch.setattr(Slot, "run_dir", property(lambda s: tmp_path / f"run{s.suffix}"))
    monkeypatch.setattr(testbed, "GLOBAL_LOCK", tmp_path / "global.lock")
    bridges: set[str] = set()
    monkeypatch.setattr(network, "link_exists", lambda name: name in bridges)
    monkeypatch.setattr(network, "read_ip_forward", lambda: "1")
    restored: list[str | None] = []
    monkeypatch.setattr(network, "remove_network", lambda _slot, before: restored.append(before))
    return {"bridges": bridges, "restored": restored}


def test_a_bed_beside_another_inherits_its_ip_forward_before(
    machine: dict[str, object], tmp_path: Path
) -> None:
    """ip_forward is 1 already because of slot 0's bed; the value to restore is slot 0's."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ip_forward_before").write_text("0\n")
    assert testbed._ip_forward_before(Slot(1)) == "0"
    (tmp_path / "run" / "ip_forward_before").unlink()
    assert testbed._ip_forward_before(Slot(1)) == "1"  # nobody else: the current value


def test_down_restores_ip_forward_only_for_the_last_bed(
    machine: dict[str, object], tmp_path: Path
) -> None:
    bridges, restored = machine["bridges"], machine["restored"]
    assert isinstance(bridges, set)
    bed = Testbed(tmp_path / "beside", Slot(1))
    bridges.add("mlfa0")  # slot 0's bed is still up
    bed._release_network("0")
    bridges.clear()
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "owner").write_text("/somewhere\n")  # slot 2's bed is coming up
    bed._release_network("0")
    (tmp_path / "run2" / "owner").unlink()
    bed._release_network("0")  # the last one
    assert restored == [None, None, "0"]


def test_two_beds_going_down_together_restore_ip_forward_once(
    machine: dict[str, object], tmp_path: Path
) -> None:
    """The first one down leaves it to the second, which must then see the first one gone."""
    beds = [Testbed(tmp_path / f"bed{n}", Slot(n)) for n in (1, 2)]
    for bed in beds:
        bed.slot.run_dir.mkdir()
        bed.owner_file.write_text(f"{bed.state_dir}\n")
    for bed in beds:
        bed._release_network("0")
    assert machine["restored"] == [None, "0"]
    assert not any(bed.owner_file.exists() for bed in beds)


def test_the_shared_base_is_built_once_when_slots_start_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []

    def slow_build(image: rootfs.BaseImage) -> None:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # the second caller arrives while this one builds
        image.dir.mkdir(parents=True)
        image.marker.write_text("{}\n")

    monkeypatch.setattr(rootfs.BaseImage, "_build", slow_build)
    found: list[Path] = []
    starters = [
        threading.Thread(target=lambda: found.append(rootfs.BaseImage(tmp_path).ensure()))
        for _ in range(2)
    ]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    assert len(builds) == 1
    assert found == [rootfs.BaseImage(tmp_path).rootfs] * 2
