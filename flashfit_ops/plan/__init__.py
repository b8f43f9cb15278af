"""Plans as data: (config, observed state, target) -> list of steps. Nothing here prints or talks
to Docker; flashfit_ops.execute carries plans out."""

from __future__ import annotations

from typing import Callable

from flashfit_ops.config.model import Config
from flashfit_ops.plan import blue_green, rolling, single
from flashfit_ops.plan.common import Target
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState
from flashfit_ops.plan.steps import Step

STRATEGIES: dict[str, Callable[[Config, Observed, Target], list[Step]]] = {
    "single": single.plan,
    "blue-green": blue_green.plan,
    "rolling": rolling.plan,
}


def plan_deploy(strategy: str, config: Config, observed: Observed, target: Target) -> list[Step]:
    return STRATEGIES[strategy](config, observed, target)


__all__ = ["STRATEGIES", "ContainerState", "Observed", "ProxyState", "Step", "Target", "plan_deploy"]
