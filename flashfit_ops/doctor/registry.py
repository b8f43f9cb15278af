"""Where each check registers itself, by name (the `check` decorator). Which checks exist, in
which order, and choosing among them is selection.py, which imports every check module: this
module imports none, so a check can import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

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


def registered() -> dict[str, Check]:
    """The checks registered so far, in the order they registered."""
    return dict(_REGISTRY)
