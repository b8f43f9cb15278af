"""Blue-green: bring up the idle color beside the live one, gate it, switch nginx to it; the live
color stays running out of rotation through the monitor window, then is drained, stopped and kept
(stopped) for a fast rollback. Pure: (config, observed, target) -> steps."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan import spare
from flashfit_ops.plan.common import (
    Target,
    backend_spec,
    base_steps,
    cutover,
    kept_for_rollback,
    other_color,
    retention_cleanup,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.repair import leftovers
from flashfit_ops.plan.steps import RemoveContainer, StartContainer, Step


def idle_color(observed: Observed) -> str:
    """The color that is not live; with a mixed live set, the other color of the newest deploy."""
    live = observed.live
    if not live:
        return "blue"
    newest = max(live, key=lambda c: c.deploy_id)
    return other_color(newest.color)


def replace_all(config: Config, observed: Observed, target: Target, *, keep_old: bool) -> list[Step]:
    """Start every new replica beside the old ones, gate, switch at once; the old ones stay running
    out of rotation through the monitor window, then are drained and stopped (see cutover).
    keep_old: they stay (stopped) for rollback, per deploy.keep_versions; else they are removed
    after the window."""
    steps, view = leftovers(config, observed)
    steps += base_steps(config, view)
    color = idle_color(view)
    specs = [backend_spec(config, target, color, replica) for replica in range(1, target.replicas + 1)]
    new = tuple(s.name for s in specs)
    old = view.live_names
    steps += [StartContainer(spec) for spec in specs]
    steps += cutover(config, view.proxy, new, old)
    keep = kept_for_rollback(config, view, old, target.version) if keep_old else set()
    steps += retention_cleanup(view, keep=keep)
    steps += [RemoveContainer(name, reason="replaced") for name in old if name not in keep]
    steps += spare.after_deploy(config, view, target, color, new)
    return steps


def plan(config: Config, observed: Observed, target: Target) -> list[Step]:
    return replace_all(config, observed, target, keep_old=True)
