"""CLI: `python -m standin {up,down,status,ssh,run,...}`; see --help."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import deps
from .rootfs import DEFAULT_DEBIAN, SUITES, BaseImage
from .services import postgres_base
from .slot import ENV_VAR
from .testbed import Testbed
from .util import HarnessError, say


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m standin",
        description=(
            "Debian 13 (or 12) test hosts (systemd-nspawn) + PostgreSQL 17 + moto S3. Needs root."
        ),
    )
    parser.add_argument("--state-dir", help="default <repo>/.cache/testhosts, + N in slot N")
    parser.add_argument("--slot", help=f"0..9: sets {ENV_VAR} (default: its value, else 0)")
    parser.add_argument(
        "--debian", type=int, choices=sorted(SUITES), default=DEFAULT_DEBIAN,
        help=f"the hosts' Debian release for up/build-base (default {DEFAULT_DEBIAN})",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="boot hosts and services, write outputs.json")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    commands.add_parser("down", help="stop and remove everything up started")
    commands.add_parser("status", help="print state, health and leftovers as JSON")
    commands.add_parser("build-base", help="only build (or find) the cached base rootfs")
    commands.add_parser(
        "build-images",
        help="build (or find) every tree the tests boot: Debian 13 and 12, the PostgreSQL tree",
    )
    for name, what in (("ssh", "ssh in as admin"), ("run", "run a command as root inside")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("host", help="host name or number")
        sub.add_argument("cmd", nargs=argparse.REMAINDER)
    for name in ("stop", "start", "reboot"):
        commands.add_parser(name, help=f"{name} one host").add_argument("host")
    # `--state-dir` and `--slot` are accepted after the sub-command too (`down --slot 1`).
    for sub in commands.choices.values():
        sub.add_argument("--state-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--slot", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument(
            "--debian", type=int, choices=sorted(SUITES), default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.slot is not None:
        os.environ[ENV_VAR] = args.slot  # validated by Testbed, as a value from the environment
    testbed = Testbed(args.state_dir, debian=args.debian)
    slot = testbed.slot
    say(f"slot {slot.number} ({ENV_VAR}): bridge {slot.bridge} {slot.subnet}, {testbed.state_dir}")
    command = args.command
    if command == "up":
        testbed.up(args.hosts)
    elif command == "down":
        testbed.down()
    elif command == "build-base":
        print(BaseImage(debian=args.debian).ensure())
    elif command == "build-images":
        deps.require_ready()
        others = [BaseImage(debian=d) for d in SUITES if d != DEFAULT_DEBIAN]
        for image in (BaseImage(debian=DEFAULT_DEBIAN), postgres_base(), *others):
            print(image.ensure())
    elif command == "status":
        report = {"slot": slot.number, "state": testbed.state(), "resources": testbed.leftovers()}
        if testbed.is_up():
            report["health_problems"] = testbed.health_problems()
        print(json.dumps(report, indent=2))
    elif command == "ssh":
        host = testbed.host(int(args.host) if args.host.isdigit() else args.host)
        argv_ssh = [*host.ssh_argv(), *args.cmd]
        os.execvp(argv_ssh[0], argv_ssh)  # noqa: S606 - hand the terminal to ssh
    else:
        return host_command(testbed, args)
    return 0


def host_command(testbed: Testbed, args: argparse.Namespace) -> int:
    host = testbed.host(int(args.host) if args.host.isdigit() else args.host)
    if args.command == "run":
        result = host.run(args.cmd or ["true"], check=False)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    if args.command == "stop":
        host.stop()
    elif args.command == "start":
        say(f"{host.name} answers SSH after {testbed.start_host(host):.1f} s")
    elif args.command == "reboot":
        say(f"{host.name} answers SSH after {host.reboot():.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as error:
        say(f"error: {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
