"""The one exception tree of flashfit. Each error knows its exit code and a hint for the user.

Exit codes (documented in the README, relied on by CI scripts):
  0  success
  1  the operation ran and failed (deploy rolled back, doctor found a failure)
  2  bad input: invalid configuration, bad flags, unknown backup or version
  3  a component flashfit needs is unreachable (Docker engine, S3 endpoint, the server)
  4  another deploy holds the lock
  5  data failed verification (a damaged backup); nothing was changed
  130 interrupted (Ctrl-C); what was running was rolled back
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_LOCKED = 4
EXIT_INTEGRITY = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation ran and failed (deploy rolled back, doctor found a failure)",
    EXIT_USAGE: "bad input: invalid configuration, bad flags, unknown backup or version",
    EXIT_UNAVAILABLE: "a component is unreachable: Docker engine, S3 endpoint or the server",
    EXIT_LOCKED: "another deploy holds the lock",
    EXIT_INTEGRITY: "data failed verification (a damaged backup); nothing was changed",
    EXIT_INTERRUPTED: "interrupted; the step in progress was rolled back",
}


class FlashFitError(Exception):
    """Base of every error flashfit reports to a user instead of a traceback."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}

    def to_dict(self) -> dict:
        out = {"error": type(self).__name__, "message": self.message, "exit_code": self.exit_code}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located by its field path (and file line where known)."""

    path: str
    message: str
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = self.path or "<root>"
        if self.source and self.line:
            where = f"{self.source}:{self.line}: {where}"
        elif self.line:
            where = f"line {self.line}: {where}"
        return f"{where}: {self.message}"


class UsageError(FlashFitError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration is invalid; carries one Problem per field."""

    def __init__(self, problems: list[Problem], *, source: str | None = None):
        self.problems = problems
        count = len(problems)
        where = f" in {source}" if source else ""
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''}{where}",
            hint="fix the fields above; `flashfit init` writes a commented example",
            details={"problems": [p.__dict__ for p in problems]},
        )


class Unavailable(FlashFitError):
    exit_code = EXIT_UNAVAILABLE


class LockHeld(FlashFitError):
    exit_code = EXIT_LOCKED


class IntegrityFailure(FlashFitError):
    exit_code = EXIT_INTEGRITY


class OperationFailed(FlashFitError):
    exit_code = EXIT_FAILED
