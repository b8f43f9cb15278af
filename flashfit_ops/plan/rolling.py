"""Rolling: N replicas behind nginx, replaced `parallelism` at a time. Each batch of new replicas
is started, gated, and takes over the old ones' slots in one switch; the old ones of the batch
stay running out of rotation (behind the standby slots) through the monitor window, so a failure
is a relink back, and only then are drained and stopped (deploy.warm_standby; opted out, they are
drained at the switch and the window is watched once, at the end). The old version is kept,
stopped, for rollback per deploy.keep_versions. Pure."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan import spare
from flashfit_ops.plan.blue_green import idle_color
from flashfit_ops.plan.common import (
    Target,
    backend_spec,
    base_steps,
    kept_for_rollback,
    retention_cleanup,
    slot_layout,
    traffic_step,
    warm_window,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.repair import leftovers
from flashfit_ops.plan.steps import Drain, Monitor, ReleaseStandby, RemoveContainer, StartContainer, Step, WaitReady


def plan(config: Config, observed: Observed, target: Target) -> list[Step]:
    steps, view = leftovers(config, observed)
    steps += base_steps(config, view)
    color = idle_color(view)
    old = list(view.live)  # sorted by replica index: slot n serves old[n-1]
    count = target.replicas
    batch = config.deploy.parallelism
    proxy_running = view.proxy.running and bool(old)
    current = [c.name for c in old]
    new_all: list[str] = []
    if not old:
        # Nothing serves yet: no traffic to protect, so everything comes up at once.
        batch = max(count, 1)
    slots = max(len(old), count)
    slot_count, reload = slot_layout(config, view.proxy, slots)
    window = config.deploy.monitor_window
    monitored = False
    for start in range(0, slots, batch):
        indices = range(start, min(start + batch, slots))
        specs = [backend_spec(config, target, color, i + 1) for i in indices if i < count]
        out = tuple(old[i].name for i in indices if i < len(old))
        names = tuple(s.name for s in specs)
        steps += [StartContainer(spec) for spec in specs]
        if names:
            steps.append(WaitReady(names=names, deadline=config.deploy.deadline))
        previous = tuple(current)
        # Slot i+1 goes to the new replica i+1 (a new slot past the old count); slots past the
        # target count are the last ones, and are dropped.
        for i in indices:
            if i < count:
                if i < len(current):
                    current[i] = backend_spec(config, target, color, i + 1).name
                else:
                    current.append(backend_spec(config, target, color, i + 1).name)
        current = [n for n in current if n not in out]
        # A batch that brings new replicas in place of old ones keeps the old ones warm.
        warm = warm_window(config) and proxy_running and bool(out) and bool(names)
        steps.append(
            traffic_step(config, proxy_running, tuple(current), previous, standby=out if warm else (), slot_count=slot_count, reload=reload)
        )
        reload = ""
        proxy_running = True
        new_all += names
        monitored = warm
        if warm:
            steps += [
                Monitor(names=tuple(new_all), window=window, fallback=out, warm=True),
                ReleaseStandby(names=tuple(current), previous=out),
            ]
        if out:
            steps.append(Drain(names=out, timeout=config.deploy.drain_timeout))
    if window > 0 and new_all and not monitored:
        steps.append(Monitor(names=tuple(new_all), window=window, fallback=tuple(c.name for c in old)))
    old_names = tuple(c.name for c in old)
    keep = kept_for_rollback(config, view, old_names, target.version)
    steps += retention_cleanup(view, keep=keep)
    steps += [RemoveContainer(name, reason="replaced") for name in old_names if name not in keep]
    steps += spare.after_deploy(config, view, target, color, tuple(current))
    return steps
