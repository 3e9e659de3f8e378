"""One problem found in a manifest, and how a list of them is printed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One problem: where (JSON path), which rule, and what to change."""

    path: str
    rule: str
    fix: str

    def __str__(self):
        return f"{self.path or '.'}: {self.rule} -> {self.fix}"


def type_name(value) -> str:
    """The JSON type of a decoded YAML value, as the schema names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def format_issues(issues: list, limit: int = 20) -> str:
    lines = [f"  {issue}" for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  (+{len(issues) - limit} more)")
    return "\n".join(lines)
