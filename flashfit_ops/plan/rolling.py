"""Rolling: N replicas behind nginx, replaced `parallelism` at a time. Each batch of new replicas
is started, gated, and takes over the old ones' slots in one switch; the old ones are then drained
(and stopped). They are removed after the monitor window. Pure."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan.blue_green import idle_color
from flashfit_ops.plan.common import (
    Target,
    backend_spec,
    base_steps,
    leftovers,
    retention_cleanup,
    traffic_step,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.steps import Drain, Monitor, RemoveContainer, StartContainer, Step, WaitReady


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
        steps.append(traffic_step(config, proxy_running, tuple(current), previous))
        proxy_running = True
        new_all += names
        if out:
            steps.append(Drain(names=out, timeout=config.deploy.drain_timeout))
    if config.deploy.monitor_window > 0 and new_all:
        steps.append(Monitor(names=tuple(new_all), window=config.deploy.monitor_window))
    steps += retention_cleanup(view, keep=set())
    steps += [RemoveContainer(c.name, reason="replaced") for c in old]
    return steps
