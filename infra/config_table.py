"""The README's configuration table, generated from the `config:` block of Pulumi.yaml.

python -m infra.config_table            # print the table
python -m infra.config_table --write    # replace it in README.md between the markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"

# The AWS provider's setting: Pulumi refuses a type or default for it in Pulumi.yaml.
REGION_ROW = (
    "aws:region",
    "string",
    "*required*",
    "AWS region to deploy to, e.g. eu-west-1 (the AWS provider's own setting).",
)


def load_config_schema(project_file: Path = ROOT / "Pulumi.yaml") -> dict[str, dict[str, Any]]:
    schema: dict[str, dict[str, Any]] = yaml.safe_load(project_file.read_text())["config"]
    return schema


def type_name(spec: dict[str, Any]) -> str:
    if spec["type"] == "array":
        return f"array of {type_name(spec['items'])}"
    return str(spec["type"])


def default_text(spec: dict[str, Any]) -> str:
    if "default" not in spec:
        return "*required*"
    value = spec["default"]
    if isinstance(value, str):
        return f"`{value}`" if value else '`""` (empty)'
    return f"`{json.dumps(value)}`"  # booleans as true/false, like YAML


def rows(schema: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    project_rows = [
        (key, type_name(spec), default_text(spec), " ".join(spec["description"].split()))
        for key, spec in schema.items()
    ]
    return [REGION_ROW, *project_rows]


def render(schema: dict[str, dict[str, Any]]) -> str:
    lines = ["| Setting | Type | Default | Description |", "|---|---|---|---|"]
    for key, kind, default, description in rows(schema):
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {default} | {escaped} |")
    return "\n".join(lines)


def readme_block(readme: str, start: str = START, end: str = END) -> str:
    """The text between the README markers, without surrounding blank lines."""
    begin = readme.index(start) + len(start)
    return readme[begin : readme.index(end)].strip("\n")


def write_readme(readme_path: Path, table: str, start: str = START, end: str = END) -> None:
    """Replace the text between the markers (also used for the role READMEs: make docs)."""
    text = readme_path.read_text()
    begin = text.index(start) + len(start)
    readme_path.write_text(f"{text[:begin]}\n{table}\n{text[text.index(end) :]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    table = render(load_config_schema())
    if args.write:
        write_readme(ROOT / "README.md", table)
    else:
        print(table)


if __name__ == "__main__":
    main()
