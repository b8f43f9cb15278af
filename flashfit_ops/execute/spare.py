"""Carrying out EnsureSpares (flashfit_ops/plan/spare.py): start and gate the warm spares, point
the standby slots at the ready ones, then remove the spares of an earlier version. Best effort:
what serves already passed its gate, so a spare that fails is a warning, never a rollback."""

from __future__ import annotations

from typing import Any, Callable

from flashfit_ops.errors import FlashFitError
from flashfit_ops.plan.steps import EnsureSpares


class SpareSteps:
    """A mixin for the Executor (it provides backend, proxy, secrets, say, execution, _gate)."""

    backend: Any
    proxy: Any
    secrets: dict[str, str]
    execution: Any
    started_at: dict[str, float]
    restart_baseline: dict[str, int]
    clock: Callable[[], float]
    say: Callable[[str, str], None]
    _gate: Callable[[tuple[str, ...], float, str], dict[str, Any]]

    def _do_ensure_spares(self, step: EnsureSpares) -> None:
        started: list[str] = []
        try:
            self.proxy.ensure_folders()
            for spec in step.start:
                self.backend.create_backend(spec, self.secrets)
                self.backend.start(spec.name)
                self.started_at[spec.name] = self.clock()
                started.append(spec.name)
            for name in step.restart:
                self.backend.start(name)
        except FlashFitError as error:
            self._spare_warning(f"could not start a warm spare ({error.message})")
        candidates = tuple(n for n in step.spares if n in started or n in step.restart or n in step.keep)
        results = self._gate(candidates, step.deadline, "spares") if candidates else {}
        ready = tuple(n for n in candidates if results[n].ready)
        for name in candidates:
            if not results[name].ready:
                self._spare_warning(f"warm spare {name} did not become ready ({results[name].reason}); it was removed")
                self._remove_quietly(name)
        for name in ready:
            if name in self.started_at:
                self.execution.ready_seconds[name] = self.clock() - self.started_at[name]
        # The standby slots: the ready spares, else the live containers (as without spares).
        self.proxy.link_standby(ready or step.live, self.proxy.current_count())
        for name in step.remove:
            if name not in ready and name not in step.live:
                self._remove_quietly(name)

    def _remove_quietly(self, name: str) -> None:
        try:
            self.backend.remove(name)
            self.proxy.forget(name)
        except FlashFitError as error:
            self._spare_warning(f"could not remove {name}: {error.message}")

    def _spare_warning(self, text: str) -> None:
        self.execution.warnings.append(text)
        self.say("warn", text)
