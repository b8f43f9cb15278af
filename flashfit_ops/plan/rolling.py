"""Rolling: N replicas behind nginx, replaced `parallelism` at a time. Each batch of new replicas
is started, gated and added to the upstreams in the same switch that takes the old ones out; the
old ones are then drained and stopped. They are removed after the monitor window. Pure."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan.blue_green import idle_color
from flashfit_ops.plan.common import (
    STOP_TIMEOUT,
    Target,
    backend_spec,
    base_steps,
    leftovers,
    retention_cleanup,
    traffic_step,
)
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.steps import Drain, Monitor, RemoveContainer, StartContainer, Step, StopContainer, WaitReady


def plan(config: Config, observed: Observed, target: Target) -> list[Step]:
    steps, view = leftovers(config, observed)
    steps += base_steps(config, view)
    color = idle_color(view)
    old = list(view.live)  # sorted by replica index
    count = target.replicas
    batch = config.deploy.parallelism
    proxy_running = view.proxy.running and bool(old)
    current = tuple(c.name for c in old)
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
        upstreams = tuple(n for n in current if n not in out) + names
        steps.append(traffic_step(config, proxy_running, upstreams, current))
        proxy_running = True
        current = upstreams
        new_all += names
        if out:
            steps.append(Drain(names=out, timeout=config.deploy.drain_timeout))
            steps += [StopContainer(name, timeout=STOP_TIMEOUT) for name in out]
    if config.deploy.monitor_window > 0 and new_all:
        steps.append(Monitor(names=tuple(new_all), window=config.deploy.monitor_window))
    steps += retention_cleanup(view, keep=set())
    steps += [RemoveContainer(c.name, reason="replaced") for c in old]
    return steps
