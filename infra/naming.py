"""Names and tags that carry the project and the stack, so stacks coexist in one account."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi


def slugify(text: str) -> str:
    """Lowercase letters, digits and single hyphens: valid in S3, RDS and IAM names."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "x"


@dataclass(frozen=True)
class Naming:
    """The project/stack pair, as names and as tags."""

    project: str
    stack: str

    @classmethod
    def current(cls) -> Naming:
        return cls(project=pulumi.get_project(), stack=pulumi.get_stack())

    @property
    def prefix(self) -> str:
        """`<project>-<stack>`, slugified: the start of every resource name."""
        return slugify(f"{self.project}-{self.stack}")

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def host_name(self, index: int) -> str:
        """Inventory name of the n-th server (1-based), e.g. mlflow-dev-1."""
        return f"mlflow-{slugify(self.stack)}-{index}"

    def tags(self, name: str | None = None) -> dict[str, str]:
        tags = {"Project": self.project, "Stack": self.stack, "ManagedBy": "pulumi"}
        if name:
            tags["Name"] = name
        return tags
