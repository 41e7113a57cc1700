"""A small reader of nginx configuration (directives, blocks, quoting) and the question the
security tests ask of it: who may reach which location without a password."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([{};])|([^\s{};"\']+)')


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None
    parent: Directive | None = field(default=None, repr=False)

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def value(self, name: str) -> list[str] | None:
        """Arguments of the last `name` directive in this block, or None."""
        found = self.children(name)
        return found[-1].args if found else None


def _strip_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        quote = ""
        for index, char in enumerate(line):
            if char in "\"'" and (not quote or quote == char):
                quote = "" if quote else char
            elif char == "#" and not quote:
                line = line[:index]
                break
        lines.append(line)
    return "\n".join(lines)


def parse(text: str) -> Directive:
    """The configuration as a tree under a root block (the http context it is included in)."""
    root = Directive("http", [], [])
    stack = [root]
    words: list[str] = []
    for match in _TOKEN.finditer(_strip_comments(text)):
        double, single, punct, word = match.groups()
        if punct is None:
            words.append(double if double is not None else single if single is not None else word)
            continue
        if punct == "}":
            assert not words, f"unterminated directive before '}}': {words}"
            stack.pop()
            continue
        assert words, f"'{punct}' without a directive"
        directive = Directive(words[0], words[1:], [] if punct == "{" else None, stack[-1])
        assert stack[-1].block is not None
        stack[-1].block.append(directive)
        if punct == "{":
            stack.append(directive)
        words = []
    assert len(stack) == 1, "unbalanced braces"
    assert not words, f"directive without ';' at the end: {words}"
    return root


def locations(block: Directive) -> list[Directive]:
    """Every location in the block, nested ones included."""
    found = []
    for location in block.children("location"):
        found.append(location)
        found.extend(locations(location))
    return found


def inherited(location: Directive, name: str) -> list[str] | None:
    """The directive's arguments in effect in the location (nginx inherits from outer blocks)."""
    block: Directive | None = location
    while block is not None:
        value = block.value(name)
        if value is not None:
            return value
        block = block.parent
    return None


def map_entries(root: Directive, variable: str) -> tuple[str, dict[str, str]]:
    """The source variable and the {key: value} of the map that defines `variable`."""
    for directive in root.children("map"):
        if directive.args[1] == variable:
            entries = {d.name: d.args[0] if d.args else "" for d in directive.block or []}
            return directive.args[0], entries
    raise AssertionError(f"no map defines {variable}")


# The maps of user -> MD5 of that user's valid Authorization header (credentials.conf): the site's
# (/: every user but metrics ones) and the metrics locations' (every user; the others' get 403).
VALID_CREDENTIAL_MAPS = (["$mlflow_credential_md5"], ["$mlflow_metrics_credential_md5"])


def password_required(root: Directive, location: Directive) -> bool:
    """True when nginx answers this location only to a request with a valid password.

    auth_basic is either a realm (always checked) or a map variable that may be "off" only when
    secure_link found the request's Authorization header to be a user's valid one."""
    if inherited(location, "satisfy") == ["any"]:
        return False
    auth = inherited(location, "auth_basic")
    if not auth or auth[0] in ("off", ""):
        return False
    if not inherited(location, "auth_basic_user_file"):
        return False
    if not auth[0].startswith("$"):
        return True
    source, entries = map_entries(root, auth[0])
    if entries.get("default", "") in ("off", "") or "volatile" in entries:
        return False
    turned_off = {key for key, value in entries.items() if value == "off"}
    if not turned_off:
        return True
    return (
        source == "$secure_link"
        and turned_off == {"1"}
        and inherited(location, "secure_link") in VALID_CREDENTIAL_MAPS
        and inherited(location, "secure_link_md5") == ["$http_authorization"]
    )
