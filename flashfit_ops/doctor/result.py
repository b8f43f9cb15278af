"""What a check finds (Finding) and what the runner reports (CheckResult). Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from flashfit_ops.errors import EXIT_FAILED, EXIT_OK

OK = "ok"
WARNING = "warning"
FAILURE = "failure"
STATUSES = (OK, WARNING, FAILURE)
_RANK = {OK: 0, WARNING: 1, FAILURE: 2}


@dataclass(frozen=True)
class Finding:
    """What one check found. Every status but ok carries a hint: what to do about it."""

    status: str
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


def ok(summary: str, **details: Any) -> Finding:
    return Finding(OK, summary, None, details)


def warning(summary: str, hint: str, **details: Any) -> Finding:
    return Finding(WARNING, summary, hint, details)


def failure(summary: str, hint: str, **details: Any) -> Finding:
    return Finding(FAILURE, summary, hint, details)


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.__getitem__, default=OK)


def combine(parts: list[tuple[str, str, str | None]], ok_summary: str, **details: Any) -> Finding:
    """Fold several (status, message, hint) problems into one Finding: the worst status, the
    messages of that status first, and every distinct hint."""
    problems = [p for p in parts if p[0] != OK]
    if not problems:
        return ok(ok_summary, **details)
    status = worst(p[0] for p in problems)
    ordered = sorted(problems, key=lambda p: -_RANK[p[0]])
    summary = "; ".join(p[1] for p in ordered)
    hints: list[str] = []
    for p in ordered:
        if p[2] and p[2] not in hints:
            hints.append(p[2])
    return Finding(status, summary, "; ".join(hints) or "see details (-v)", details)


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "summary": self.summary,
            "hint": self.hint,
            "details": self.details,
            "duration_ms": round(self.duration_ms, 1),
        }


def exit_code(results: Iterable[CheckResult]) -> int:
    """0 when nothing failed (warnings allowed), 1 when at least one check failed."""
    return EXIT_FAILED if any(r.status == FAILURE for r in results) else EXIT_OK


def counts(results: Iterable[CheckResult]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for r in results:
        out[r.status] += 1
    return out
