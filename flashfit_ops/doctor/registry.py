"""The checks `flashfit doctor` knows, by name, in the order they are reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from flashfit_ops.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from flashfit_ops.doctor.context import DoctorContext
    from flashfit_ops.doctor.result import Finding

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    func: Callable[["DoctorContext"], "Finding"]
    description: str
    timeout: float = DEFAULT_TIMEOUT


_REGISTRY: dict[str, Check] = {}


def check(name: str, description: str, timeout: float = DEFAULT_TIMEOUT) -> Callable:
    """Register a check function under `name` (decorator)."""

    def decorate(func: Callable[["DoctorContext"], "Finding"]) -> Callable[["DoctorContext"], "Finding"]:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"two doctor checks named {name!r}")
        _REGISTRY[name] = Check(name, func, description, timeout)
        return func

    return decorate


def all_checks() -> list[Check]:
    from flashfit_ops.doctor.checks import ORDER  # importing registers every check

    known = [_REGISTRY[name] for name in ORDER if name in _REGISTRY]
    extra = [c for name, c in _REGISTRY.items() if name not in ORDER]
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
