"""Machine prerequisites: root, kernel features, and the Debian packages the harness uses."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .slot import GLOBAL_LOCK
from .util import REPO_ROOT, HarnessError, file_lock, run, say

INSTALL_SCRIPT = REPO_ROOT / ".ci" / "install-test-deps.sh"

# Commands the harness calls; any missing one means .ci/install-test-deps.sh has to run.
REQUIRED_COMMANDS = (
    "debootstrap",
    "systemd-nspawn",
    "nft",
    "ip",
    "nsenter",
    "ssh",
    "ssh-keygen",
    "runuser",
    "haproxy",  # the stand-in load balancer of the scale tests
    "openssl",
    "chroot",  # the PostgreSQL 17 stand-in runs from a Debian 13 tree (services.py)
    "chromium",  # the UI tests' headless browser (tests/integration/browser.py), the TLS tests'
    "pebble",  # the ACME test server of the TLS tests
    "pebble-challtestsrv",  # its DNS stub (test domain names)
    "certutil",  # libnss3-tools: trusts pebble's root in Chromium's NSS database
)


def pinned_pebble_version() -> str:
    """The pebble release .ci/install-test-deps.sh pins (certificate profiles; why: see there)."""
    found = re.search(r"^PEBBLE_VERSION=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    if not found:
        raise HarnessError(f"{INSTALL_SCRIPT} pins no PEBBLE_VERSION")
    return found.group(1)


def missing_commands() -> list[str]:
    """Commands not on PATH, plus pebble when it is not the pinned release."""
    missing = [cmd for cmd in REQUIRED_COMMANDS if shutil.which(cmd) is None]
    if "pebble" not in missing and (have := _pebble_version()) != pinned_pebble_version():
        missing.append(f"pebble {pinned_pebble_version()} (have {have or 'none'})")
    return missing


def _pebble_version() -> str:
    """The installed pebble package's version ('' when dpkg does not know it)."""
    if shutil.which("dpkg-query") is None:
        return ""
    result = run(["dpkg-query", "-W", "-f=${Version}", "pebble"], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def kernel_problems() -> list[str]:
    """Kernel features nspawn hosts need that no package can bring."""
    problems = []
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("overlay filesystem not supported by the kernel (/proc/filesystems)")
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("no cgroup filesystem at /sys/fs/cgroup")
    if not Path("/proc/self/ns/net").exists():
        problems.append("no network namespaces (/proc/self/ns/net)")
    return problems


def missing_prerequisites() -> list[str]:
    """Why this machine cannot run test hosts (empty when it can, maybe after installing)."""
    if os.geteuid() != 0:
        return ["root (the harness mounts overlays, creates namespaces and runs systemd-nspawn)"]
    problems = kernel_problems()
    if missing_commands() and shutil.which("apt-get") is None:
        problems.append(f"commands {missing_commands()} and no apt-get to install them")
    return problems


def ensure_packages() -> None:
    """Install the Debian packages through .ci/install-test-deps.sh when a command is missing."""
    missing = missing_commands()
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"missing {', '.join(missing)}; run as root: sudo bash {INSTALL_SCRIPT}")
    # Beds of other slots may be starting too: one install at a time (dpkg has a lock, but
    # fails instead of waiting for it), and re-check once it is ours.
    with file_lock(GLOBAL_LOCK):
        if missing_commands():
            say(f"missing {', '.join(missing)}: running {INSTALL_SCRIPT}")
            run(["bash", INSTALL_SCRIPT], capture=False, timeout=900)
    still = missing_commands()
    if still:
        raise HarnessError(f"still missing after {INSTALL_SCRIPT}: {', '.join(still)}")


def require_ready() -> None:
    """Raise with every missing prerequisite named, after installing what packages can fix."""
    problems = missing_prerequisites()
    if problems:
        raise HarnessError("cannot run test hosts here: " + "; ".join(problems))
    ensure_packages()
