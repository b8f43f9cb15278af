"""Blue-green: bring up the idle color beside the live one, gate it, switch nginx to it, drain the
live color, stop it and keep it (stopped) for a fast rollback. Pure: (config, observed, target) -> steps."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan.common import (
    Target,
    backend_spec,
    base_steps,
    cutover,
    leftovers,
    other_color,
    retention_cleanup,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.steps import RemoveContainer, StartContainer, Step


def idle_color(observed: Observed) -> str:
    """The color that is not live; with a mixed live set, the other color of the newest deploy."""
    live = observed.live
    if not live:
        return "blue"
    newest = max(live, key=lambda c: c.deploy_id)
    return other_color(newest.color)


def replace_all(config: Config, observed: Observed, target: Target, *, keep_old: bool) -> list[Step]:
    """Start every new replica beside the old ones, gate, switch at once, drain, stop the old.
    keep_old: the old containers stay (stopped) for rollback; else they are removed after the
    monitor window (until then they are only stopped, so a late failure can start them again)."""
    steps, view = leftovers(config, observed)
    steps += base_steps(config, view)
    color = idle_color(view)
    specs = [backend_spec(config, target, color, replica) for replica in range(1, target.replicas + 1)]
    new = tuple(s.name for s in specs)
    old = view.live_names
    steps += [StartContainer(spec) for spec in specs]
    steps += cutover(config, view.proxy.running, new, old)
    steps += retention_cleanup(view, keep=set(old) if keep_old else set())
    if not keep_old:
        steps += [RemoveContainer(name, reason="replaced") for name in old]
    return steps


def plan(config: Config, observed: Observed, target: Target) -> list[Step]:
    return replace_all(config, observed, target, keep_old=True)
