"""Each role README's variable table, generated from the role's meta/argument_specs.yml.

PYTHONPATH=. python ansible/role_tables.py          # print every role's table
PYTHONPATH=. python ansible/role_tables.py --write  # write them into each README (make docs)

argument_specs.yml is the one source of a variable's type, default and description;
defaults/main.yml holds the same defaults for Ansible (a unit test checks both agree).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from infra import config_table  # the README markers' reader and writer (PYTHONPATH=.)

ROLES_DIR = Path(__file__).resolve().parent / "roles"
START = "<!-- variables:start -->"
END = "<!-- variables:end -->"
YAML_END = "...\n"  # what safe_dump appends to a lone scalar


def load_options(role_dir: Path) -> dict[str, dict[str, Any]]:
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def load_defaults(role_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((role_dir / "defaults" / "main.yml").read_text()) or {}


def type_text(spec: dict[str, Any]) -> str:
    kind = spec.get("type", "raw")
    if "elements" in spec:
        kind = f"{kind} of {spec['elements']}"
    if "choices" in spec:
        kind += ": " + ", ".join(f"`{choice}`" for choice in spec["choices"])
    return f"{kind}, secret" if spec.get("no_log") else kind


def value_text(value: Any) -> str:
    if isinstance(value, str):
        text = " ".join(value.split()) or '""'
    else:
        flow = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False)
        text = flow.removesuffix(YAML_END).strip()
    return f"`{text}`".replace("|", "\\|")  # a Jinja filter's | would end the table cell


def default_text(name: str, spec: dict[str, Any], defaults: dict[str, Any]) -> str:
    if "default" in spec:
        return value_text(spec["default"])
    if spec.get("required"):
        return "*required*"
    # Derived from other variables: a template, which only defaults/main.yml can hold.
    return value_text(defaults[name]) if name in defaults else "unset"


def description_text(spec: dict[str, Any]) -> str:
    text = spec["description"]
    text = " ".join(text if isinstance(text, list) else [text])
    text = re.sub(r"\b[CIV]\(([^)]*)\)", r"`\1`", " ".join(text.split()))  # Ansible markup
    return text.replace("|", "\\|")


def render(role_dir: Path) -> str:
    defaults = load_defaults(role_dir)
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for name, spec in load_options(role_dir).items():
        lines.append(
            f"| `{name}` | {type_text(spec)} | {default_text(name, spec, defaults)} | "
            f"{description_text(spec)} |"
        )
    return "\n".join(lines)


def readme_block(readme: str) -> str:
    return config_table.readme_block(readme, START, END)


def write_readme(readme_path: Path, table: str) -> None:
    config_table.write_readme(readme_path, table, START, END)


def roles() -> list[Path]:
    return sorted(path.parent.parent for path in ROLES_DIR.glob("*/meta/argument_specs.yml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update each role's README.md")
    args = parser.parse_args()
    for role_dir in roles():
        table = render(role_dir)
        if args.write:
            write_readme(role_dir / "README.md", table)
        else:
            print(f"## {role_dir.name}\n{table}\n")


if __name__ == "__main__":
    main()
