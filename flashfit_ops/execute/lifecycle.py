"""The executor every service command uses: the deploy executor plus the steps of issue 11 (the
keeper, warm spares, and what only `down` does). None of them is undone: what was removed on purpose is not
brought back, and a keeper that could not start is a warning, never a rollback."""

from __future__ import annotations

from pathlib import Path

from flashfit_ops.errors import FlashFitError
from flashfit_ops.execute.executor import Executor
from flashfit_ops.execute.spare import SpareSteps
from flashfit_ops.monitoring import filesd
from flashfit_ops.plan.keeper import KEEPER_SOCKETS, KEEPER_TARGETS_DIR
from flashfit_ops.plan.steps import EnsureKeeper, RemoveNetwork, RemoveVolume

KEEPER_SCRIPT = Path(__file__).with_name("keeper_main.py")
# The modules the script imports besides the standard library, mounted beside it by these names.
KEEPER_MODULES = {"flashfit_filesd": str(Path(filesd.__file__))}


class LifecycleExecutor(SpareSteps, Executor):
    def _do_remove_network(self, step: RemoveNetwork) -> None:
        self.backend.remove_network(step.name)

    def _do_remove_volume(self, step: RemoveVolume) -> None:
        self.backend.remove_volume(step.name)

    def _do_ensure_keeper(self, step: EnsureKeeper) -> None:
        info = self.backend.container(step.name)
        current = (
            info is not None
            and info.image == step.image
            and KEEPER_SOCKETS in info.mount_targets  # (a keeper without them cannot fail over)
            # Monitoring switched on or off: the keeper rewrites the scrape targets, or must stop.
            and (KEEPER_TARGETS_DIR in info.mount_targets) == bool(step.targets_dir)
        )
        if info is not None and info.state == "running" and current:
            return
        try:
            if step.targets_dir:
                Path(step.targets_dir).mkdir(parents=True, exist_ok=True)  # a bind mount needs its source
            if info is not None:
                self.backend.remove(step.name)
            self.backend.run_keeper(step, str(KEEPER_SCRIPT), KEEPER_MODULES)
        except FlashFitError as error:
            text = f"the keeper did not start ({error.message}): killed containers come back only with `flashfit repair`"
            self.execution.warnings.append(text)
            self.say("warn", text)
