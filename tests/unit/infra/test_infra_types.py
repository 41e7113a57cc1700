"""The type check of `make lint` reads every pulumi-aws service the program uses.

pyproject.toml lets mypy read only the services listed there (all ~250 cost minutes); a service
the program starts using without being listed would be `Any`, its arguments unchecked."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROGRAM = [REPO / "__main__.py", *sorted((REPO / "infra").glob("*.py"))]


def checked_modules() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    modules: set[str] = set()
    for override in config["overrides"]:
        if override.get("follow_imports") == "normal":
            modules.update(override["module"])
    return modules


def used_services(path: Path) -> set[str]:
    """pulumi_aws.<name> for every `aws.<name>` (import pulumi_aws as aws) and from-import."""
    tree = ast.parse(path.read_text())
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "pulumi_aws"
    }
    used = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            used.add(f"pulumi_aws.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pulumi_aws"):
            parts = (node.module or "").split(".")
            used.update(
                f"pulumi_aws.{parts[1]}" if len(parts) > 1 else f"pulumi_aws.{alias.name}"
                for alias in node.names
            )
    return used


def test_every_pulumi_aws_service_used_is_type_checked() -> None:
    used = set().union(*(used_services(path) for path in PROGRAM))

    assert "pulumi_aws.ec2" in used  # the scan finds the program's services
    assert used - checked_modules() == set(), "add them to [[tool.mypy.overrides]] in pyproject"
