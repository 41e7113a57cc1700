"""The Debian base root filesystems the test hosts boot from (built once, cached).

Debian 13 (trixie) by default, the `os` a stack gets by default; Debian 12 (bookworm) on
request (`BaseImage(debian=12)`, `Testbed(debian=12)`). A base may carry extra packages
(the PostgreSQL stand-in's tree is Debian 13 plus postgresql-17, see services.py): it is
made from a copy of the plain base of its release with the extras installed, not by a
debootstrap of its own (on a fresh machine, one debootstrap fewer: minutes of `make test`).

The cache lives outside the checkout under /var/cache/mlflow-aws-testhosts/<recipe hash>/:
`rootfs/` is the tree, `complete` is written last, so a half-built tree is never used.
The recipe hash covers everything that goes into the tree (suite, mirrors, packages,
files written, commands run): change any of it and the next `up` builds a new base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .util import HarnessError, file_lock, run, run_with_progress, say

CACHE_ROOT = Path("/var/cache/mlflow-aws-testhosts")
# Debian release -> suite. 13 is the default: the OS `make infra` gives a user by default.
SUITES = {13: "trixie", 12: "bookworm"}
DEFAULT_DEBIAN = 13
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
MACHINE_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))

# What a Debian cloud image has that the roles may rely on, plus python3-apt for Ansible's apt.
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
    "netbase",
    "procps",
    "curl",
)

ADMIN_USER = "admin"

SSHD_CONFIG = """\
# Test host: key-only SSH like an EC2 instance.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
"""

# pip inside the hosts uses PyPI over the network (like EC2) and must trust the CA bundle,
# which may include a TLS-intercepting proxy's CA copied from the machine (see hosts.py).
PIP_CONF = """\
[global]
cert = /etc/ssl/certs/ca-certificates.crt
"""


def machine_mirrors() -> tuple[str, str]:
    """The Debian and Debian-security mirror URIs the machine itself uses."""
    mirror, security = DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
    for source in MACHINE_SOURCES:
        if not source.exists():
            continue
        for uri in _uris(source.read_text()):
            if uri.rstrip("/").endswith("debian-security"):
                security = uri.rstrip("/")
            elif uri.rstrip("/").endswith("/debian"):
                mirror = uri.rstrip("/")
    return mirror, security


def _uris(text: str) -> list[str]:
    uris = []
    for line in text.splitlines():
        words = line.split()
        if line.startswith("URIs:"):
            uris.extend(words[1:])
        elif words[:1] == ["deb"]:
            uris.extend(w for w in words[1:] if "://" in w)
    return uris


def sources_file(mirror: str, security: str, suite: str) -> str:
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def recipe_files(mirror: str, security: str, suite: str) -> dict[str, tuple[str, int]]:
    """Files written into the base tree: path -> (content, mode)."""
    return {
        "etc/apt/sources.list.d/debian.sources": (sources_file(mirror, security, suite), 0o644),
        "etc/ssh/sshd_config.d/50-testhost.conf": (SSHD_CONFIG, 0o644),
        f"etc/sudoers.d/90-{ADMIN_USER}": (f"{ADMIN_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440),
        "etc/pip.conf": (PIP_CONF, 0o644),
        "etc/fstab": ("# test host: no block devices\n", 0o644),
    }


# Commands run inside the tree (chroot) after the files above are in place.
CHROOT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("apt-get", "update", "-qq"),
    ("apt-get", "-y", "-qq", "-o", "Dpkg::Options::=--force-confold", "dist-upgrade"),
    ("apt-get", "clean"),
    ("useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", ADMIN_USER),
    ("install", "-d", "-m", "0700", "-o", ADMIN_USER, "-g", ADMIN_USER, f"/home/{ADMIN_USER}/.ssh"),
)


# Per-host identity is made on first boot (hosts.py); the base must not carry one.
CLEANUP_PATHS = ("etc/ssh/ssh_host_*", "usr/sbin/policy-rc.d", "var/lib/dbus/machine-id")


class BaseImage:
    """A cached base tree for one recipe; `ensure()` builds it if it is not complete yet."""

    def __init__(
        self,
        cache_root: Path = CACHE_ROOT,
        *,
        debian: int = DEFAULT_DEBIAN,
        extra_packages: tuple[str, ...] = (),
    ) -> None:
        if debian not in SUITES:
            raise HarnessError(
                f"Debian {debian} is not buildable here: choose one of {sorted(SUITES)}"
            )
        self.debian = debian
        self.suite = SUITES[debian]
        self.extra_packages = extra_packages
        self.include = (*INCLUDE, *extra_packages)
        # The plain base of this release this one is copied from (None: this is a plain base).
        self.parent = BaseImage(cache_root, debian=debian) if extra_packages else None
        self.mirror, self.security = machine_mirrors()
        self.files = recipe_files(self.mirror, self.security, self.suite)
        self.recipe_hash = self._hash()
        self.cache_root = cache_root
        self.dir = cache_root / self.recipe_hash
        self.rootfs = self.dir / "rootfs"
        self.marker = self.dir / "complete"

    def _hash(self) -> str:
        recipe = {
            "suite": self.suite,
            "mirror": self.mirror,
            "security": self.security,
            "include": self.include,
            "files": self.files,
            "commands": CHROOT_COMMANDS,
            "cleanup": CLEANUP_PATHS,
        }
        if self.parent:  # (only then: the plain bases keep their hashes, and their caches)
            recipe["parent"] = self.parent.recipe_hash
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def is_complete(self) -> bool:
        return self.marker.exists()

    def ensure(self) -> Path:
        """Return the rootfs path, building it first when no complete cache exists."""
        if self.is_complete():
            return self.rootfs
        if self.parent:  # before taking the lock below, which building the parent takes too
            self.parent.ensure()
        # Shared by every slot and checkout: a machine-wide lock, so two beds starting at once
        # build it once; the second waits, then finds it complete (the marker is written last).
        with file_lock(self.cache_root / ".lock"):
            if not self.is_complete():  # another process may have built it meanwhile
                self._build()
        return self.rootfs

    def _build(self) -> None:
        partial = self.cache_root / f"{self.recipe_hash}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)  # an old incomplete attempt
        tree = partial / "rootfs"
        tree.mkdir(parents=True)
        started = time.monotonic()
        say(
            f"building Debian {self.debian} ({self.suite}) base {self.recipe_hash} "
            f"in {self.cache_root} (about 2 min)"
        )
        try:
            if self.parent:
                self._derive(tree, self.parent)
            else:
                self._debootstrap(tree)
                self._customize(tree)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        took = time.monotonic() - started
        info = {
            "recipe": self.recipe_hash,
            "suite": self.suite,
            "include": self.include,
            "mirror": self.mirror,
            "build_seconds": round(took),
        }
        (partial / "complete").write_text(json.dumps(info) + "\n")
        partial.rename(self.dir)
        say(f"base {self.recipe_hash} built in {took:.0f} s")
        self._prune_others()

    def _prune_others(self) -> None:
        """Drop older bases of the same kind (suite and packages) no mounted host uses.

        About 300 MB each. Bases of other kinds (Debian 12, the PostgreSQL tree) are kept:
        one `make test` uses them all.
        """
        mounts = Path("/proc/self/mounts").read_text()
        for other in self.cache_root.iterdir():
            if not other.is_dir() or other == self.dir or f"lowerdir={other}/" in mounts:
                continue
            if self._same_kind(other):
                say(f"removing old base {other}")
                shutil.rmtree(other, ignore_errors=True)

    def _same_kind(self, other: Path) -> bool:
        """Whether `other` is a base of this suite and packages (or an unlabelled old one)."""
        try:
            info = json.loads((other / "complete").read_text())
        except (OSError, ValueError):
            return ".partial-" not in other.name  # a half-built tree of a crashed build
        suite, include = info.get("suite"), info.get("include")
        return suite is None or (suite == self.suite and tuple(include or ()) == self.include)

    def _debootstrap(self, tree: Path) -> None:
        say(f"debootstrap {self.suite} from {self.mirror} ...")
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(self.include)}"]
        run_with_progress([*argv, self.suite, tree, self.mirror], "debootstrap")

    def _derive(self, tree: Path, parent: BaseImage) -> None:
        """A copy of the plain base (already configured) with the extra packages installed."""
        extras = self.extra_packages
        say(f"copying base {parent.recipe_hash}, then installing {' '.join(extras)} ...")
        run(["cp", "-a", "--reflink=auto", f"{parent.rootfs}/.", tree], timeout=600)
        install = ("apt-get", "-y", "-qq", "--no-install-recommends", "install", *extras)
        with _chroot_mounts(tree):
            for command in (("apt-get", "update", "-qq"), install, ("apt-get", "clean")):
                run_with_progress(["chroot", tree, *command], " ".join(command[:2]))

    def _customize(self, tree: Path) -> None:
        say("configuring base: sources, upgrades, user admin, sshd ...")
        (tree / "etc/apt/sources.list").unlink(missing_ok=True)
        for rel, (content, mode) in self.files.items():
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)
        with _chroot_mounts(tree):
            for command in CHROOT_COMMANDS:
                run_with_progress(["chroot", tree, *command], " ".join(command[:2]))
        for rel in CLEANUP_PATHS:
            for path in tree.glob(rel):
                path.unlink()
        # Empty (not missing) machine-id: each host gets its own on first boot.
        (tree / "etc/machine-id").write_text("")


@contextlib.contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    """/proc, /sys and /dev for apt's maintainer scripts; services are kept from starting."""
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    mounted: list[Path] = []
    try:
        for fs, target in (("proc", "proc"), ("sysfs", "sys")):
            run(["mount", "-t", fs, fs, tree / target])
            mounted.append(tree / target)
        run(["mount", "--bind", "/dev", tree / "dev"])
        mounted.append(tree / "dev")
        yield
    finally:
        for target in reversed(mounted):
            run(["umount", "--lazy", target], check=False)
        policy.unlink(missing_ok=True)
