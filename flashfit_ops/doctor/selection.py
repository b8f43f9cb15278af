"""The checks `flashfit doctor` knows, in the order they are reported, and choosing among them.
Importing the checks package registers every check (registry.py)."""

from __future__ import annotations

from flashfit_ops.doctor.checks import ORDER
from flashfit_ops.doctor.registry import Check, registered
from flashfit_ops.errors import UsageError


def all_checks() -> list[Check]:
    checks = registered()
    known = [checks[name] for name in ORDER if name in checks]
    extra = [c for name, c in checks.items() if name not in ORDER]
    return known + extra


def select(names: list[str] | None) -> list[Check]:
    """The checks named (in registry order), or all of them; an unknown name is a usage error."""
    checks = all_checks()
    if not names:
        return checks
    by_name = {c.name: c for c in checks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(
            f"unknown check{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            hint=f"`flashfit doctor --list-checks` lists them: {', '.join(by_name)}",
        )
    wanted = set(names)
    return [c for c in checks if c.name in wanted]
