"""Repair: bring what runs back to a consistent, serving state, restoring service first. Pure:
(config, observed) -> a Repair (the steps, the state after them, and what was found).

The slot links are the truth: they are what nginx routes to. applied.json is only the record of
the last switch that finished, so when the two disagree the links win while the containers they
name run (and are not known unready): an interrupted deploy whose new version serves is completed,
never undone. Only when the linked containers are gone does traffic go back to the recorded ones.

Order, service first: leftover temp files, then (when nothing usable runs) start the stopped live
containers again and gate them, then start the proxy on the live backends (or re-point the slots
away from dead ones), and only then remove containers of a deploy that never switched and drain
an older generation still running (a crash while draining)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flashfit_ops.config.model import Config
from flashfit_ops.plan import spare
from flashfit_ops.plan.common import proxy_spec
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState
from flashfit_ops.plan.steps import (
    CleanProxyFiles,
    Drain,
    EnsureProxy,
    RemoveContainer,
    RestartContainer,
    Step,
    SwitchUpstreams,
    WaitReady,
)

UNREADY = "unready"


@dataclass(frozen=True)
class Repair:
    steps: tuple[Step, ...]
    view: Observed  # the state as it will be after the steps
    findings: tuple[str, ...]  # what disagrees, in words (what status reports)

    def to_dict(self) -> dict:
        return {"findings": list(self.findings), "plan": [s.to_dict() for s in self.steps]}


def _usable(container: ContainerState | None) -> bool:
    return container is not None and container.running and container.health != UNREADY


def _choose_live(observed: Observed, restart_stopped: bool) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """(the containers the slots should name, stopped ones to start first, findings)."""
    proxy = observed.proxy
    routed, recorded = tuple(proxy.config), tuple(proxy.applied)
    findings: list[str] = []
    if routed and recorded and routed != recorded:
        findings.append(
            f"nginx routes to {', '.join(routed)} but the last completed switch recorded {', '.join(recorded)} "
            "(a deploy was interrupted during its switch)"
        )
    for name in dict.fromkeys((*routed, *recorded)):
        container = observed.by_name(name)
        if container is None:
            findings.append(f"{name} is routed to but no longer exists")
        elif not container.running:
            findings.append(f"{name} is routed to but is {container.state}")
        elif container.health == UNREADY:
            findings.append(f"{name} runs but is not ready")
    for names in (routed, recorded):
        usable = tuple(n for n in dict.fromkeys(names) if _usable(observed.by_name(n)))
        if usable:
            # Same slot count (no nginx reload, which would close idle keep-alive connections):
            # a dead slot is pointed at a usable container, round robin.
            return tuple(n if n in usable else usable[i % len(usable)] for i, n in enumerate(names)), (), findings
    for names in (routed, recorded) if restart_stopped else ():
        stopped = tuple(
            n for n in dict.fromkeys(names) if (c := observed.by_name(n)) is not None and not c.running and c.state != "dead"
        )
        if stopped:
            return stopped, stopped, findings
    return (), (), findings


def _standby_elsewhere(proxy: ProxyState, live: tuple[str, ...], spares: tuple[str, ...] = ()) -> bool:
    """The standby slots link to something other than the live containers or their spares."""
    if not proxy.standby:
        return False
    if spares:
        return not set(proxy.standby) <= set(live) | set(spares)
    return set(proxy.standby) != set(live)


def plan_repair(config: Config, observed: Observed, *, restart_stopped: bool = True, spares: bool = True) -> Repair:
    """restart_stopped: start the live containers again when none runs (repair, start); not after
    a deliberate `flashfit stop`, nor inside a deploy's own plan (its explicit repair ran first).
    spares: bring the warm spares back too (not before a deploy or rollback, which replaces them)."""
    proxy = observed.proxy
    if proxy.legacy:
        # Its containers and config predate the slots: nothing to repair, and the deploy's own
        # switch replaces the proxy (the strategies see it as absent).
        view = dataclasses.replace(observed, proxy=dataclasses.replace(proxy, state="replace"))
        return Repair((), view, ())
    steps: list[Step] = []
    if proxy.stray_files:
        steps.append(CleanProxyFiles(files=tuple(proxy.stray_files)))
    live, restart, findings = _choose_live(observed, restart_stopped)
    warm = spare.spares_of(observed, live)  # warm spares of the live version: kept as they are
    if restart:
        steps += [RestartContainer(name) for name in restart]
        steps.append(WaitReady(names=restart, deadline=config.deploy.deadline))
    if live and not proxy.running:
        findings.append(f"the proxy {proxy.name} is {proxy.state}")
        steps.append(EnsureProxy(spec=proxy_spec(config), slots=live))
    elif live and (restart or live != proxy.applied or proxy.config != proxy.applied or _standby_elsewhere(proxy, live, warm)):
        # After a restart too: the switch proves through every slot and the proxy that they serve.
        # Standby slots still on a previous version (a deploy killed in its monitor window) follow
        # the live ones (or their running spares), so the old version can be drained for good
        # (else the keeper revives it).
        steps.append(SwitchUpstreams(slots=live, previous=live, standby=spare.standby_targets(observed, live)))
    elif not live and (proxy.config or proxy.applied):
        findings.append("no container that served is left to restore: deploy a version")

    known = [observed.by_name(n) for n in (*proxy.applied, *proxy.config, *live)]
    newest_live = max((c.deploy_id for c in known if c is not None), default="")
    served = set(proxy.served or ()) | set(live)

    def never_served(container: ContainerState) -> bool:
        if proxy.served is not None:
            return container.name not in served and container.name not in proxy.config
        # No record of who served (an older proxy folder): newer than everything live.
        return container.deploy_id > newest_live

    remaining: list[ContainerState] = []
    lingering: list[str] = []
    for container in observed.containers:
        if container.name in live:
            state = "running" if container.name in restart else container.state
            remaining.append(dataclasses.replace(container, state=state))
        elif container.name in warm:
            remaining.append(container)
        elif never_served(container):
            steps.append(RemoveContainer(container.name, reason="leftover of a deploy that never switched"))
        elif container.running and not (container.health == UNREADY and container.name in (*proxy.config, *proxy.applied)):
            # It served once and still runs (a crash while draining): finish the job. A routed
            # one that is out of the slots now (unready) is left running for a look.
            lingering.append(container.name)
            remaining.append(dataclasses.replace(container, state="exited"))
        else:
            remaining.append(container)
    if lingering:
        steps.append(Drain(names=tuple(lingering), timeout=config.deploy.drain_timeout))
    if restart_stopped and spares and live:
        # Service and tidying first; then the warm spares (deploy.spare_replicas) come back.
        steps += spare.maintain(config, observed, live)
    view = dataclasses.replace(
        observed,
        containers=tuple(remaining),
        proxy=dataclasses.replace(
            proxy,
            applied=live,
            config=live,
            stray_files=(),
            config_present=bool(live),
            state="running" if live else proxy.state,
            exists=proxy.exists or bool(live),
        ),
    )
    return Repair(tuple(steps), view, tuple(findings))


def leftovers(config: Config, observed: Observed) -> tuple[list[Step], Observed]:
    """What a deploy or rollback runs first: the steps that repair what an interrupted deploy (or
    a killed container) left, service first, and the state as it will be after them. Nothing
    stopped is started again (a deploy replaces it)."""
    repair = plan_repair(config, observed, restart_stopped=False)
    return list(repair.steps), repair.view
