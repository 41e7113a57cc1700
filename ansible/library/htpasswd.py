#!/usr/bin/python
"""Ansible module: manage the users of an htpasswd file with passlib (runs on the target)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: htpasswd
short_description: Manage the users of an htpasswd file (nginx/Apache basic auth)
description:
  - Writes one C(name:hash) line per user, hashed with passlib.
  - An entry is rewritten only when its password no longer verifies against the stored hash,
    or when the stored hash uses another scheme or another number of rounds.
  - The file is replaced atomically (temporary file in the same directory, then rename), so a
    reader such as nginx, which re-reads the file on every request, never sees a partial file.
  - Reports the names added, updated and removed, never passwords or hashes.
version_added: "1.0.0"
author: mlflow-aws
requirements:
  - passlib (python3-passlib on Debian/Ubuntu)
options:
  path:
    description: Path of the htpasswd file. Its directory must exist.
    type: path
    required: true
    aliases: [dest]
  users:
    description: The users to have in the file.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: User name (no colon, no whitespace).
        type: str
        required: true
      password:
        description: Plain-text password; only its hash is written.
        type: str
        required: true
  scheme:
    description:
      - passlib hash scheme. nginx verifies the hash on every request, so its cost is paid per
        request; C(apr_md5_crypt) is the cheapest, C(bcrypt) the most expensive.
    type: str
    default: sha512_crypt
    choices: [sha512_crypt, sha256_crypt, bcrypt, apr_md5_crypt]
  rounds:
    description:
      - Rounds (for bcrypt, the log2 cost) of new hashes. Hashes with other rounds are rewritten.
      - Defaults to crypt(3)'s 5000 for SHA-crypt and to cost 5 for bcrypt, not to passlib's
        defaults (656000 rounds, cost 12) which would cost nginx 0.2-0.3 s per request.
        Ignored for C(apr_md5_crypt).
    type: int
  exclusive:
    description: Remove users that are in the file but not in O(users).
    type: bool
    default: true
extends_documentation_fragment:
  - files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Write the basic auth users
  htpasswd:
    path: /etc/nginx/mlflow/htpasswd
    users:
      - name: team
        password: "{{ team_password }}"
    owner: root
    group: www-data
    mode: "0640"
  no_log: true
"""

RETURN = r"""
added:
  description: Names of the users added.
  returned: always
  type: list
  elements: str
updated:
  description: Names of the users whose hash was rewritten.
  returned: always
  type: list
  elements: str
removed:
  description: Names of the users removed.
  returned: always
  type: list
  elements: str
"""

import os  # noqa: E402 - Ansible modules put documentation first
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    from passlib.context import CryptContext

    PASSLIB_IMPORT_ERROR = None
except ImportError as error:  # pragma: no cover - depends on the target's packages
    CryptContext = None
    PASSLIB_IMPORT_ERROR = error

SCHEMES = ("sha512_crypt", "sha256_crypt", "bcrypt", "apr_md5_crypt")
# nginx pays the hash on every request: keep crypt(3)'s cheap defaults unless told otherwise.
DEFAULT_ROUNDS = {"sha512_crypt": 5000, "sha256_crypt": 5000, "bcrypt": 5}
# crypt(3) implementations (libxcrypt, used by nginx) understand $2y$ and $2b$; Apache's
# htpasswd writes $2y$, so bcrypt hashes use it for the widest compatibility.
BCRYPT_IDENT = "2y"

ARGUMENT_SPEC: dict[str, Any] = {
    "path": {"type": "path", "required": True, "aliases": ["dest"]},
    "users": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "name": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
        },
    },
    "scheme": {"type": "str", "default": "sha512_crypt", "choices": list(SCHEMES)},
    "rounds": {"type": "int"},
    "exclusive": {"type": "bool", "default": True},
}


@dataclass
class Plan:
    """What the file should become and why."""

    lines: list[str]
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def crypt_context(scheme: str, rounds: int | None) -> Any:
    """A passlib context that hashes with `scheme` and flags every other scheme for update."""
    settings: dict[str, Any] = {}
    rounds = DEFAULT_ROUNDS.get(scheme) if rounds is None else rounds
    if rounds is not None and scheme != "apr_md5_crypt":
        # min = max = default: a stored hash with any other rounds "needs update".
        for key in ("default_rounds", "min_rounds", "max_rounds"):
            settings[f"{scheme}__{key}"] = rounds
    if scheme == "bcrypt":
        settings["bcrypt__ident"] = BCRYPT_IDENT
    others = [name for name in SCHEMES if name != scheme]
    return CryptContext(
        schemes=[scheme, *others], default=scheme, deprecated=others or None, **settings
    )


def entry_name(line: str) -> str | None:
    """The user name of a `name:hash` line; None for comments, blank and other lines."""
    if line.lstrip().startswith("#") or ":" not in line:
        return None
    return line.partition(":")[0]


def parse_entries(lines: list[str]) -> dict[str, str]:
    """User name -> stored hash of its first `name:hash` line."""
    entries: dict[str, str] = {}
    for line in lines:
        name = entry_name(line)
        if name is not None and name not in entries:
            entries[name] = line.partition(":")[2].strip()
    return entries


def _note(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def is_current(context: Any, password: str, stored: str) -> bool:
    """True when `password` verifies against `stored` and the hash needs no update."""
    try:
        verified, replacement = context.verify_and_update(password, stored)
    except (ValueError, TypeError):
        # Unknown or malformed hash (or a scheme whose backend is missing): rewrite it.
        return False
    return bool(verified) and replacement is None


def plan_file(
    lines: list[str],
    users: list[dict[str, str]],
    context: Any,
    exclusive: bool,
    make_hashes: bool = True,
) -> Plan:
    """Compute the new file content; hashes are only computed when `make_hashes` is set."""
    entries = parse_entries(lines)
    wanted = {user["name"]: user["password"] for user in users}
    plan = Plan(lines=[])

    def new_entry(name: str) -> str:
        return f"{name}:{context.hash(wanted[name]) if make_hashes else '*'}"

    seen: set[str] = set()
    for line in lines:
        name = entry_name(line)
        if name is None:
            plan.lines.append(line)  # comments and blank lines stay where they are
        elif name in seen:
            _note(plan.updated if name in wanted else plan.removed, name)  # drop duplicates
        elif name not in wanted:
            if exclusive:
                plan.removed.append(name)
            else:
                plan.lines.append(line)
        elif is_current(context, wanted[name], entries[name]):
            plan.lines.append(line)
        else:
            plan.updated.append(name)
            plan.lines.append(new_entry(name))
        if name is not None:
            seen.add(name)
    for user in users:
        if user["name"] not in entries:
            plan.added.append(user["name"])
            plan.lines.append(new_entry(user["name"]))
    return plan


def read_lines(path: str) -> list[str] | None:
    """The file's lines, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return None


def write_atomically(module: AnsibleModule, path: str, content: str, exists: bool) -> None:
    """Write a temporary file next to `path`, give it its final attributes, rename it over."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(content)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        _copy_attributes(module, path, temp_path, exists)
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
    _fsync_directory(directory)


def _copy_attributes(module: AnsibleModule, path: str, temp_path: str, exists: bool) -> None:
    # Readers must never see the file with other permissions than before (mkstemp makes it
    # 0600): start from the current file's owner and mode (or the umask's for a new file),
    # then apply the requested ones.
    if exists:
        current = os.stat(path)
        os.chown(temp_path, current.st_uid, current.st_gid)
        os.chmod(temp_path, current.st_mode & 0o7777)
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)
    file_args = module.load_file_common_arguments(module.params, path=temp_path)
    module.set_fs_attributes_if_different(file_args, False)


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_users(module: AnsibleModule, users: list[dict[str, str]]) -> None:
    """Fail on names that cannot be written to an htpasswd file or that repeat."""
    seen: set[str] = set()
    for user in users:
        name = user["name"]
        if not name or ":" in name or any(char.isspace() for char in name) or "#" in name[:1]:
            module.fail_json(msg=f"invalid user name {name!r}: no colon, whitespace or leading #")
        if name in seen:
            module.fail_json(msg=f"user {name!r} is listed twice")
        seen.add(name)


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    path = params["path"]
    users = params["users"]
    check_users(module, users)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        module.fail_json(msg=f"directory {directory} does not exist")
    try:
        context = crypt_context(params["scheme"], params["rounds"])
        existing = read_lines(path)
        plan = plan_file(
            existing or [], users, context, params["exclusive"], make_hashes=not module.check_mode
        )
    except ValueError as error:  # passlib rejects impossible settings (e.g. too few rounds)
        module.fail_json(msg=f"cannot hash with scheme {params['scheme']}: {error}")

    changed = plan.changed or existing is None
    if changed and not module.check_mode:
        write_atomically(module, path, "\n".join(plan.lines) + "\n", exists=existing is not None)
    if os.path.exists(path):
        file_args = module.load_file_common_arguments(params)
        changed = module.set_fs_attributes_if_different(file_args, changed)
    return {
        "changed": changed,
        "path": path,
        "added": plan.added,
        "updated": plan.updated,
        "removed": plan.removed,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC, add_file_common_args=True, supports_check_mode=True
    )
    if CryptContext is None:
        module.fail_json(msg=missing_required_lib("passlib"), exception=str(PASSLIB_IMPORT_ERROR))
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
