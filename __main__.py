"""Pulumi entry point: validate the settings, declare the stack, export its outputs."""

import pulumi

from infra.settings import SettingsError, load_settings
from infra.stack import build_stack

try:
    # StackSettings are validated before any resource is declared; the zone lookup in
    # build_stack can still find the region or instance type unusable.
    stack = build_stack(load_settings())
except SettingsError as err:
    # RunError: Pulumi prints the message alone, without a Python traceback.
    raise pulumi.RunError(f"invalid stack configuration: {err}") from None

for name, value in stack.outputs.items():
    pulumi.export(name, value)
