"""Warm spares (deploy.spare_replicas): containers of the live version that run, ready, out of
rotation, behind the upstream's standby (`backup`) slots. nginx tries them the moment every live
slot fails (a killed or stopped backend refuses connections at once), and the keeper relinks the
dead backend's slots to a spare and starts the dead one again as the next spare, so losing the
only live backend costs no cold start. Pure.

Which containers are spares is read, not labelled: the ones the standby slots link to that are
not live and run the live version. The keeper swaps roles by relinking (a spare becomes live, the
dead live one the spare), so a label fixed at creation would lie after the first failover."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.plan.common import Target, backend_name, backend_spec
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.steps import ContainerSpec, EnsureSpares, Step


def spares_of(observed: Observed, live: tuple[str, ...]) -> tuple[str, ...]:
    """The spares of `live`: standby-linked containers, not live, of a version `live` runs."""
    versions = {c.version for n in live if (c := observed.by_name(n)) is not None}
    out = []
    for name in observed.proxy.standby:
        container = observed.by_name(name)
        if name not in live and container is not None and container.version in versions and container.state != "dead":
            out.append(name)
    return tuple(out)


def standby_targets(observed: Observed, live: tuple[str, ...]) -> tuple[str, ...]:
    """What a switch to `live` should leave the standby slots on: the running spares (their
    sockets exist), else () for the live containers themselves."""
    return tuple(n for n in spares_of(observed, live) if (c := observed.by_name(n)) is not None and c.running)


def after_deploy(config: Config, observed: Observed, target: Target, color: str, live: tuple[str, ...]) -> list[Step]:
    """The last step of a deploy or rollback that switched to `live` (of `target`): new spares of
    that version (replica numbers after the live ones), and the spares of the version it replaced
    removed once the new ones are linked. Nothing when no spare is configured or left over."""
    count = config.deploy.spare_replicas
    earlier = spares_of(observed, observed.live_names)
    if count <= 0:
        return [EnsureSpares(live=live, remove=earlier)] if earlier else []
    specs = tuple(backend_spec(config, target, color, len(live) + k) for k in range(1, count + 1))
    return [EnsureSpares(live=live, start=specs, remove=tuple(n for n in earlier if n not in live), deadline=config.deploy.deadline)]


def maintain(config: Config, observed: Observed, live: tuple[str, ...]) -> list[Step]:
    """For repair and start: keep deploy.spare_replicas spares of the version `live` runs. Running
    ones are kept, stopped ones started again, missing ones created from the first live
    container's version and deploy; nothing when that already holds and the standby slots link
    to them. Extra spares (the setting was lowered) are removed."""
    count = config.deploy.spare_replicas
    spares = spares_of(observed, live)
    first = observed.by_name(live[0]) if live else None
    if first is None or (count <= 0 and not spares):
        return []
    running = tuple(n for n in spares if (c := observed.by_name(n)) is not None and c.running)
    stopped = tuple(n for n in spares if n not in running)
    keep = running[:count]
    restart = stopped[: count - len(keep)]
    extra = tuple(n for n in spares if n not in keep and n not in restart)
    missing = count - len(keep) - len(restart)
    used = {c.name for c in observed.containers}
    specs: list[ContainerSpec] = []
    replica = max((c.replica for c in observed.containers if c.deploy_id == first.deploy_id), default=0)
    target = Target(version=first.version, deploy_id=first.deploy_id)
    while len(specs) < missing:
        replica += 1
        if backend_name(config.project, first.color, replica, first.deploy_id) not in used:
            specs.append(backend_spec(config, target, first.color, replica))
    linked = set(observed.proxy.standby) == set(keep) and bool(keep)
    if not restart and not specs and not extra and (linked or count == 0):
        return []
    return [EnsureSpares(live=live, start=tuple(specs), restart=restart, keep=keep, remove=extra, deadline=config.deploy.deadline)]
