"""stop, start and down as plans. Pure: (config, observed) -> steps.

- stop: the keeper first (it would start them again), then the proxy (clients get a refused connection, not a 502 from a proxy with nothing
  behind it), then the live backends drained and stopped; every container is kept, and the slot
  links stay, so `start` knows what was live. The restart policies leave stopped containers be.
- start: the containers that were live, started again and gated, then the proxy on them: the
  repair plan, with stopped containers allowed back.
- down: every container of the project removed (the keeper, then the proxy first), the proxy's state files, the
  network; the data volumes only when asked.
"""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan.common import backend_mounts, slot_socket
from flashfit_ops.plan.keeper import keeper_name
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.repair import plan_repair
from flashfit_ops.plan.steps import CleanProxyFiles, Drain, RemoveContainer, Step, StopContainer
from flashfit_ops.plan.steps import RemoveNetwork, RemoveVolume

# What `down` removes from the proxy folder: a later deploy starts as on a fresh host.
PROXY_STATE_FILES = ("nginx.conf", "applied.json")


def plan_stop(config: Config, observed: Observed) -> list[Step]:
    steps: list[Step] = []
    if observed.keeper_state == "running":  # first, or it would start everything again
        steps.append(StopContainer(keeper_name(config.project)))
    if observed.proxy.running:
        steps.append(StopContainer(observed.proxy.name))
    running = tuple(c.name for c in observed.containers if c.running)
    if running:
        steps.append(Drain(names=running, timeout=config.deploy.drain_timeout))
    return steps


def plan_start(config: Config, observed: Observed) -> list[Step]:
    return list(plan_repair(config, observed, restart_stopped=True).steps)


def plan_down(config: Config, observed: Observed, *, volumes: bool, slot_count: int = 0) -> list[Step]:
    steps: list[Step] = []
    if observed.keeper_state != "missing":
        steps.append(RemoveContainer(keeper_name(config.project), reason="down"))
    if observed.proxy.exists:
        steps.append(RemoveContainer(observed.proxy.name, reason="down"))
    steps += [RemoveContainer(c.name, reason="down") for c in observed.containers]
    files = (*PROXY_STATE_FILES, *(slot_socket(n) for n in range(1, slot_count + 1)))
    steps.append(CleanProxyFiles(files=files))
    if observed.network_exists:
        steps.append(RemoveNetwork(config.network_name))
    if volumes:
        steps += [RemoveVolume(m.source) for m in backend_mounts(config) if m.kind == "volume"]
    return steps
