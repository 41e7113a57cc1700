"""Per-host cgroup directories: where each host's nspawn and all its processes live.

The machine does not run systemd, so nobody else gives nspawn a cgroup: the supervisor of
each host moves itself into `<root>/<group>/<host>` of every cgroup hierarchy nspawn uses
(name=systemd and unified on a hybrid machine; the single root on cgroup v2). The group is
the slot's (`mlflow-testhosts`, `mlflow-testhosts3`...; see slot.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")


def roots() -> list[Path]:
    """The hierarchies nspawn needs a cgroup in, on this machine's cgroup layout."""
    if (CGROUP_FS / "unified" / "cgroup.procs").exists():  # hybrid v1 + v2
        hierarchies = [CGROUP_FS / "systemd", CGROUP_FS / "unified"]
        return [h for h in hierarchies if (h / "cgroup.procs").exists()]
    if (CGROUP_FS / "cgroup.controllers").exists():  # pure v2
        return [CGROUP_FS]
    return [CGROUP_FS / "systemd"]


def host_dirs(group: str, name: str) -> list[Path]:
    return [root / group / name for root in roots()]


def pids(directory: Path) -> list[int]:
    """Every process in `directory` and its sub-cgroups."""
    found: list[int] = []
    if not directory.is_dir():
        return found
    for current, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            try:
                text = Path(current, "cgroup.procs").read_text()
            except FileNotFoundError:  # a booting or stopping host's systemd removed it meanwhile
                continue
            found.extend(int(line) for line in text.split())
    return found


def kill_all(group: str, name: str) -> int:
    """SIGKILL every process left in the host's cgroups; return how many were signalled."""
    victims = {pid for directory in host_dirs(group, name) for pid in pids(directory)}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(victims)


def remove(directory: Path) -> None:
    """rmdir a cgroup tree depth-first (cgroup dirs cannot be removed with their children)."""
    if not directory.is_dir():
        return
    for current, _dirs, _files in os.walk(directory, topdown=False):
        with contextlib.suppress(OSError):  # still busy: reported by leftovers()
            Path(current).rmdir()


def remove_host(group: str, name: str) -> None:
    for directory in host_dirs(group, name):
        remove(directory)


def remove_group(group: str) -> None:
    for root in roots():
        remove(root / group)


def host_names(group: str) -> list[str]:
    """Hosts with a cgroup directory in `group` (their processes may outlive a state dir)."""
    return sorted({d.name for root in roots() for d in (root / group).glob("*/")})


def leftovers(group: str) -> list[str]:
    return [str(root / group) for root in roots() if (root / group).exists()]
