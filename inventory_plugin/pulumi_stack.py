"""Ansible inventory plugin: the hosts and variables of an mlflow-aws Pulumi stack.

The outputs it reads are defined in ``infra/outputs.py``. The outputs loader below is shared
with ``python -m inventory_plugin.credentials``, which imports it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var

try:
    from infra.outputs import MAX_SECONDS, OUTPUTS, REQUIRED, SECRET
except ModuleNotFoundError:  # Ansible loads this file by path: the repository is not on sys.path
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from infra.outputs import MAX_SECONDS, OUTPUTS, REQUIRED, SECRET

if TYPE_CHECKING:
    from ansible.inventory.data import InventoryData
    from ansible.parsing.dataloader import DataLoader

DOCUMENTATION = r"""
name: pulumi_stack
short_description: Hosts and variables of an mlflow-aws Pulumi stack
description:
  - Reads the outputs of an mlflow-aws Pulumi stack with
    C(pulumi stack output --json --show-secrets --stack <stack>), run in O(project_dir),
    or from a saved JSON file of the same shape (O(outputs_file), for air-gapped use and tests).
  - Adds one host per entry of the C(hosts) output, named after its C(name), in group C(mlflow),
    with the connection variables and the C(mlflow_*) variables the roles use.
  - When the stack exports C(ssh_private_key), writes it to C(<credentials_dir>/<stack>/ssh_key)
    (mode 0600, directory 0700) and points C(ansible_ssh_private_key_file) at it.
  - SSH host keys are pinned in C(<credentials_dir>/<stack>/known_hosts).
  - The configuration file name must end with C(pulumi_stack.yml) or C(pulumi_stack.yaml).
    Relative paths in it are relative to the file; relative paths from the environment are
    relative to the current directory.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as a configuration of this plugin.
    required: true
    choices: ['pulumi_stack']
  stack:
    description: The Pulumi stack to read (a stack of the project in O(project_dir)).
    type: str
    default: dev
    env:
      - name: STACK
  project_dir:
    description:
      - The Pulumi project folder (holding C(Pulumi.yaml)); C(pulumi) runs there.
      - Defaults to the repository root, the parent of the folder holding this plugin.
    type: str
  outputs_file:
    description:
      - Read the stack outputs from this JSON file instead of running C(pulumi).
      - The environment variable overrides the value in the configuration file.
    type: str
    env:
      - name: MLFLOW_AWS_OUTPUTS_FILE
  credentials_dir:
    description:
      - Folder of the operator's credentials; each stack gets its own sub-folder.
      - Defaults to C(.credentials) in the repository root.
    type: str
    env:
      - name: MLFLOW_AWS_CREDENTIALS_DIR
"""

EXAMPLES = r"""
# ansible/inventory/pulumi_stack.yml
plugin: pulumi_stack
stack: prod

# Air-gapped: outputs saved with
#   pulumi stack output --json --show-secrets --stack prod > outputs.json
plugin: pulumi_stack
stack: prod
outputs_file: ../../outputs.json
keyed_groups:
  - key: mlflow_aws_region
    prefix: region
"""

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CREDENTIALS_DIR = REPO_ROOT / ".credentials"
OUTPUTS_FILE_ENV = "MLFLOW_AWS_OUTPUTS_FILE"
CONFIG_SUFFIXES = ("pulumi_stack.yml", "pulumi_stack.yaml")
HOST_GROUP = "mlflow"
PULUMI_INSTALL_URL = "https://www.pulumi.com/docs/install/"
PULUMI_TIMEOUT_SECONDS = 120

# Stack and host names become path components: no '/', no leading '.'.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Keep user:password out of any URL echoed from pulumi's stderr.
URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+):[^@\s]+@")


class StackOutputsError(Exception):
    """A one-line message naming what is wrong with the stack outputs and how to fix it."""


@dataclass(frozen=True)
class OutputsSource:
    """Where outputs come from: named in every error, with the fix for bad content."""

    description: str
    fix: str


@dataclass(frozen=True)
class StackHost:
    name: str
    public_ip: str
    private_ip: str = ""
    public_dns: str = ""


@dataclass(frozen=True)
class StackOutputs:
    """Validated outputs by name (infra/outputs.py); secrets never show in its repr."""

    values: Mapping[str, Any]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items() if k not in SECRET)
        return f"StackOutputs({shown})"

    hosts = property(lambda self: self.values["hosts"])
    ssh_user = property(lambda self: self.values["ssh_user"])
    db_dsn = property(lambda self: self.values["db_dsn"])
    artifacts_destination = property(lambda self: self.values["artifacts_destination"])
    region = property(lambda self: self.values["region"])
    url = property(lambda self: self.values["url"])
    ssh_private_key = property(lambda self: self.values["ssh_private_key"])
    drain_seconds = property(lambda self: self.values["drain_seconds"])
    ca_certificate = property(lambda self: self.values["ca_certificate"])

    @property
    def s3(self) -> dict[str, str]:
        """The S3-compatible store's settings (local stand-ins only)."""
        return {k: v for k, v in self.values.items() if OUTPUTS[k].standin and v is not None}


# ---------------------------------------------------------------- loading the outputs


def check_stack_name(stack: str) -> str:
    if not isinstance(stack, str) or not NAME_PATTERN.fullmatch(stack):
        raise StackOutputsError(
            f"invalid stack name {stack!r}: use a stack of this project named with letters, "
            "digits, '.', '-' and '_' (set STACK or the 'stack' option)"
        )
    return stack


def load_outputs(stack: str, project_dir: Path, outputs_file: Path | None) -> StackOutputs:
    """Read and validate the outputs: from the file when given, else from the pulumi CLI."""
    check_stack_name(stack)
    if outputs_file is not None:
        return parse_outputs(read_outputs_file(outputs_file), file_source(stack, outputs_file))
    return parse_outputs(run_pulumi_stack_output(stack, project_dir), pulumi_source(stack))


def file_source(stack: str, path: Path) -> OutputsSource:
    return OutputsSource(
        f"outputs file {path}",
        "fix the file or save it again with "
        f"`pulumi stack output --json --show-secrets --stack {stack} > {path}`",
    )


def pulumi_source(stack: str) -> OutputsSource:
    return OutputsSource(
        f"Pulumi stack '{stack}'",
        f"run `make infra STACK={stack}` so the stack exports the outputs of this version",
    )


def read_outputs_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackOutputsError(
            f"outputs file {path} does not exist: save it with "
            f"`pulumi stack output --json --show-secrets > {path}`, or unset "
            f"{OUTPUTS_FILE_ENV} and the 'outputs_file' option to read the stack with pulumi"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise StackOutputsError(f"cannot read outputs file {path}: {reason}") from None


def pulumi_command(pulumi: str, stack: str) -> list[str]:
    # Secrets only ever travel on stdout; the command line holds none.
    return [
        pulumi,
        "stack",
        "output",
        "--json",
        "--show-secrets",
        "--non-interactive",
        "--color",
        "never",  # plain stderr for the error message
        "--stack",
        stack,
    ]


def run_pulumi_stack_output(stack: str, project_dir: Path) -> str:
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise StackOutputsError(
            f"the Pulumi CLI `pulumi` is not on PATH: install it ({PULUMI_INSTALL_URL}), or set "
            f"{OUTPUTS_FILE_ENV} (or the 'outputs_file' option) to a file saved with "
            "`pulumi stack output --json --show-secrets`"
        )
    if not project_dir.is_dir():
        raise StackOutputsError(
            f"project_dir {project_dir} is not a directory: set 'project_dir' to the folder "
            "holding Pulumi.yaml"
        )
    try:
        result = subprocess.run(
            pulumi_command(pulumi, stack),
            cwd=project_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=PULUMI_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackOutputsError(
            f"`pulumi stack output --stack {stack}` did not answer within "
            f"{PULUMI_TIMEOUT_SECONDS} s: check `pulumi whoami` and the backend's reachability"
        ) from None
    except OSError as exc:
        raise StackOutputsError(f"cannot run {pulumi}: {exc.strerror}") from None
    if result.returncode != 0:
        raise pulumi_failure(stack, project_dir, result.returncode, result.stderr)
    return result.stdout


def pulumi_failure(
    stack: str, project_dir: Path, returncode: int, stderr: str
) -> StackOutputsError:
    if "no stack named" in stderr:
        return StackOutputsError(
            f"Pulumi stack '{stack}' does not exist in {project_dir}: list the stacks with "
            "`pulumi stack ls` and set STACK to one of them, or create it with "
            f"`make infra STACK={stack}`"
        )
    return StackOutputsError(
        f"`pulumi stack output --stack {stack}` failed in {project_dir} (exit {returncode}): "
        f"{summarize_stderr(stderr)}"
    )


def summarize_stderr(stderr: str, max_lines: int = 5, max_chars: int = 800) -> str:
    """The last lines of pulumi's stderr on one line, with URL passwords masked."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " | ".join(lines[-max_lines:]) or "no error output"
    return URL_CREDENTIALS.sub(r"\1:***@", text)[:max_chars]


# ---------------------------------------------------------------- validating the outputs


def parse_outputs(text: str, source: OutputsSource) -> StackOutputs:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the text itself may hold secrets.
        raise content_error(
            source, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    return validate_outputs(data, source)


def content_error(source: OutputsSource, problem: str) -> StackOutputsError:
    return StackOutputsError(f"{source.description}: {problem}; {source.fix}")


JSON_TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}


def type_name(value: object) -> str:
    """The JSON kind of a value, for error messages (the value itself may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, str) and not value.strip():
        return "an empty string"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, Mapping):
        return "an object" if value else "an empty object"
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def validate_outputs(data: object, source: OutputsSource) -> StackOutputs:
    if not isinstance(data, Mapping):
        raise content_error(
            source, f"expected a JSON object of stack outputs, got {type_name(data)}"
        )
    missing = [name for name in REQUIRED if data.get(name) is None]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise content_error(source, f"required output(s) {names} missing")
    values = {}
    for name, output in OUTPUTS.items():
        value = data.get(name, output.default)
        # null means "absent" only where absent is null (drain_seconds: null is an error).
        absent = value is None and output.default is None
        values[name] = None if absent else VALIDATORS[output.kind](value, name, source)
    return StackOutputs(values)


def text_output(value: object, name: str, source: OutputsSource) -> str | None:
    """A string; an empty optional one counts as absent."""
    if OUTPUTS[name].required:
        return required_string(value, f"output '{name}'", source)
    return optional_string(value, f"output '{name}'", source) or None


def pem_certificate(value: object, name: str, source: OutputsSource) -> str:
    text = optional_string(value, f"output '{name}'", source)
    if text is None or "-----BEGIN CERTIFICATE-----" not in text:
        raise content_error(source, f"output '{name}' must be a PEM certificate")
    return text


def seconds(value: object, name: str, source: OutputsSource) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SECONDS:
        raise content_error(
            source,
            f"output '{name}' must be an integer from 0 to {MAX_SECONDS}, "
            f"got {type_name(value) if not isinstance(value, int) else value}",
        )
    return value


def required_string(value: object, where: str, source: OutputsSource) -> str:
    if not isinstance(value, str) or not value.strip():
        raise content_error(source, f"{where} must be a non-empty string, got {type_name(value)}")
    return value


def optional_string(value: object, where: str, source: OutputsSource) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise content_error(source, f"{where} must be a string, got {type_name(value)}")
    return value


def validate_hosts(value: object, name: str, source: OutputsSource) -> tuple[StackHost, ...]:
    if not isinstance(value, list) or not value:
        raise content_error(
            source, f"output '{name}' must be a non-empty list of hosts, got {type_name(value)}"
        )
    hosts = tuple(
        validate_host(entry, f"hosts[{index}]", source) for index, entry in enumerate(value)
    )
    seen: set[str] = set()
    for index, host in enumerate(hosts):
        if host.name in seen:
            raise content_error(source, f"hosts[{index}].name '{host.name}' is used twice")
        seen.add(host.name)
    return hosts


def validate_host(entry: object, where: str, source: OutputsSource) -> StackHost:
    if not isinstance(entry, Mapping):
        raise content_error(source, f"{where} must be an object, got {type_name(entry)}")
    for key in ("name", "public_ip"):
        if entry.get(key) is None:
            raise content_error(source, f"{where} has no '{key}'")
    name = required_string(entry["name"], f"{where}.name", source)
    if not NAME_PATTERN.fullmatch(name):
        raise content_error(
            source, f"{where}.name '{name}' is not a host name (letters, digits, '.', '-', '_')"
        )
    return StackHost(
        name=name,
        public_ip=ip_address(entry["public_ip"], f"{where}.public_ip", source),
        private_ip=ip_address(entry.get("private_ip") or "", f"{where}.private_ip", source),
        public_dns=optional_string(entry.get("public_dns"), f"{where}.public_dns", source) or "",
    )


def ip_address(value: object, where: str, source: OutputsSource) -> str:
    """An IP address as a string; '' stays '' (for the optional private_ip)."""
    if value == "":
        return ""
    text = required_string(value, where, source)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise content_error(source, f"{where} '{text}' is not an IP address") from None


VALIDATORS = {
    "hosts": validate_hosts,
    "text": text_output,
    "pem": pem_certificate,
    "seconds": seconds,
}


# ---------------------------------------------------------------- credentials folder


def ensure_private_dir(path: Path) -> None:
    """Create path and its missing parents as 0700 directories; existing ones are kept as is."""
    for directory in reversed([path, *path.parents]):
        if not directory.is_dir():
            directory.mkdir(mode=0o700, exist_ok=True)
            directory.chmod(0o700)  # mkdir's mode is filtered by the umask


def prepare_stack_dir(credentials_dir: Path, stack: str) -> Path:
    """<credentials_dir>/<stack>, 0700: it holds the key, passwords and known_hosts."""
    stack_dir = credentials_dir / check_stack_name(stack)
    try:
        ensure_private_dir(stack_dir)
        stack_dir.chmod(0o700)
    except OSError as exc:
        raise StackOutputsError(
            f"cannot create the credentials folder {stack_dir}: {exc.strerror}; "
            "set MLFLOW_AWS_CREDENTIALS_DIR (or 'credentials_dir') to a writable folder"
        ) from None
    return stack_dir


def write_private_key(path: Path, key: str) -> bool:
    """Write the key with mode 0600, atomically; return False (file untouched) if unchanged."""
    # OpenSSH rejects a key file whose last line has no newline ("invalid format").
    data = (key if key.endswith("\n") else key + "\n").encode()
    if path.is_file() and path.read_bytes() == data:
        path.chmod(0o600)
        return False
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return True


def install_private_key(stack_dir: Path, key: str | None) -> Path | None:
    if key is None or not key.strip():
        return None
    path = stack_dir / "ssh_key"
    try:
        write_private_key(path, key)
    except OSError as exc:
        raise StackOutputsError(f"cannot write the SSH key {path}: {exc.strerror}") from None
    return path


# ---------------------------------------------------------------- host variables


def build_host_vars(
    outputs: StackOutputs, host: StackHost, stack: str, stack_dir: Path, key_file: Path | None
) -> dict[str, Any]:
    ssh_args = f"-o UserKnownHostsFile={shlex.quote(str(stack_dir / 'known_hosts'))}"
    host_vars: dict[str, Any] = {
        "ansible_host": host.public_ip,
        "ansible_ssh_common_args": ssh_args,
        "mlflow_stack": stack,
        "mlflow_credentials_dir": str(stack_dir),
        "mlflow_public_dns": host.public_dns,
        "mlflow_public_ip": host.public_ip,
        "mlflow_private_ip": host.private_ip,
    }
    host_vars.update(
        {
            output.host_var: outputs.values[name]
            for name, output in OUTPUTS.items()
            if output.host_var and outputs.values[name] is not None
        }
    )
    if key_file is not None:
        host_vars["ansible_ssh_private_key_file"] = str(key_file)
        # Only the stack's key: an agent holding many keys would otherwise exhaust MaxAuthTries.
        host_vars["ansible_ssh_common_args"] = f"{ssh_args} -o IdentitiesOnly=yes"
    return host_vars


def resolve_path(value: str, base: Path) -> Path:
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


@dataclass(frozen=True)
class PluginOptions:
    """This plugin's options, read from its configuration file and the environment."""

    stack: str
    project_dir: Path
    outputs_file: Path | None
    credentials_dir: Path


# ---------------------------------------------------------------- the plugin


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "pulumi_stack"
    # Stack outputs are data, never templates: a password may contain "{{".
    trusted_by_default = False

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and str(path).endswith(CONFIG_SUFFIXES)

    def parse(
        self, inventory: InventoryData, loader: DataLoader, path: str, cache: bool = True
    ) -> None:
        super().parse(inventory, loader, path, cache)
        config = self._read_config_data(path)
        self._refuse_unknown_options(config, path)
        options = self._read_options(config, Path(path).resolve().parent)
        try:
            outputs = load_outputs(options.stack, options.project_dir, options.outputs_file)
            stack_dir = prepare_stack_dir(options.credentials_dir, options.stack)
            key_file = install_private_key(stack_dir, outputs.ssh_private_key)
        except StackOutputsError as exc:
            # from None: Ansible would print the chained cause as a second, duplicate message.
            raise AnsibleParserError(str(exc)) from None
        self.inventory.add_group(HOST_GROUP)
        for host in outputs.hosts:
            self._add_host(
                host.name, build_host_vars(outputs, host, options.stack, stack_dir, key_file)
            )

    def _refuse_unknown_options(self, config: Mapping[str, Any], path: str) -> None:
        """A misspelt option would otherwise be ignored silently (e.g. the stack to read)."""
        unknown = sorted(str(key) for key in config if key not in self._options)
        if unknown:
            raise AnsibleParserError(
                f"{path}: unknown option(s) {', '.join(unknown)} for the pulumi_stack plugin; "
                f"known: {', '.join(sorted(self._options))}"
            )

    def _read_options(self, config: Mapping[str, Any], config_dir: Path) -> PluginOptions:
        return PluginOptions(
            stack=self.get_option("stack"),
            project_dir=self._path_option("project_dir", config, config_dir) or REPO_ROOT,
            outputs_file=self._outputs_file(config, config_dir),
            credentials_dir=self._path_option("credentials_dir", config, config_dir)
            or DEFAULT_CREDENTIALS_DIR,
        )

    def _outputs_file(self, config: Mapping[str, Any], config_dir: Path) -> Path | None:
        # The environment wins over the file: tests and air-gapped runs need no config edit.
        from_env = os.environ.get(OUTPUTS_FILE_ENV)
        if from_env:
            return resolve_path(from_env, Path.cwd())
        return self._path_option("outputs_file", config, config_dir)

    def _path_option(self, name: str, config: Mapping[str, Any], config_dir: Path) -> Path | None:
        value = self.get_option(name)
        if not value:
            return None
        return resolve_path(str(value), config_dir if name in config else Path.cwd())

    def _add_host(self, name: str, host_vars: dict[str, Any]) -> None:
        self.inventory.add_host(name, group=HOST_GROUP)
        for var, value in host_vars.items():
            # wrap_var also drops the trust the config file gave the `stack` value.
            self.inventory.set_variable(name, var, wrap_var(value))
        strict = self.get_option("strict")
        all_vars = self.inventory.get_host(name).get_vars()
        self._set_composite_vars(self.get_option("compose"), all_vars, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), all_vars, name, strict=strict)
        self._add_host_to_keyed_groups(
            self.get_option("keyed_groups"), all_vars, name, strict=strict
        )
