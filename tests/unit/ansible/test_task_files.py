"""Task files use only what ansible-core 2.19 defines where they use it."""

from __future__ import annotations

from pathlib import Path

ROLES = Path(__file__).resolve().parents[3] / "ansible" / "roles"


def test_no_task_file_uses_ansible_managed() -> None:
    """ansible_managed exists only inside templates: a copy task's content using it fails the run
    (found on the Ubuntu-only apt.postgresql.org task, which no local test host reaches)."""
    users = [
        f"{path.relative_to(ROLES)}:{number}"
        for path in sorted(ROLES.glob("*/tasks/*.yml")) + sorted(ROLES.glob("*/handlers/*.yml"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "ansible_managed" in line and "{{" in line
    ]
    assert users == []
