"""The executor for lifecycle plans (`flashfit down`): the deploy executor plus the steps only
`down` has, which are never undone (what was removed on purpose is not brought back)."""

from __future__ import annotations

from flashfit_ops.execute.executor import Executor
from flashfit_ops.plan.steps import RemoveNetwork, RemoveVolume


class LifecycleExecutor(Executor):
    def _do_remove_network(self, step: RemoveNetwork) -> None:
        self.backend.remove_network(step.name)

    def _do_remove_volume(self, step: RemoveVolume) -> None:
        self.backend.remove_volume(step.name)
