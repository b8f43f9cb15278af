"""One call for the CLI, the benchmark and tests: load, select, run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flashfit_ops.doctor.result import CheckResult


def run_doctor(
    config_path: Path,
    *,
    env: str | None = None,
    names: list[str] | None = None,
    settings: Any = None,
    **context_kwargs: Any,
) -> tuple[list[CheckResult], float]:
    """(results, wall seconds). Unknown check names and invalid configs raise UsageError/ConfigError."""
    from flashfit_ops.config import load_config
    from flashfit_ops.doctor.context import DoctorContext
    from flashfit_ops.doctor.selection import select
    from flashfit_ops.doctor.runner import run_checks

    checks = select(names)
    config = load_config(config_path, env=env)
    ctx = DoctorContext(config, Path(config_path), env=env, settings=settings, **context_kwargs)
    started = time.perf_counter()
    results = run_checks(checks, ctx)
    return results, time.perf_counter() - started
