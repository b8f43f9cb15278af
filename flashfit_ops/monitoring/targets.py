"""The scrape targets file: exactly the backend containers the proxy's replica slots point to,
rewritten atomically at every completed switch (Prometheus's file_sd sees the rename through the
bind-mounted folder and applies it without a reload), and by the keeper once it has failed a dead
backend's slots over to a spare (the spare is scraped, the dead one no longer is); both write
through filesd.py, so the two writers make the same document.

Why file-based discovery and not Docker's: the slots, not the engine, say which containers take
traffic. A blue-green deploy keeps the old color's containers (running until drained, then
stopped and retained for a fast rollback) on the same network with the same labels; Docker SD
would list them all and need relabel rules that mirror the slot logic. The file is written by the
very code that moves the slots, so a replica is a target from the switch that gives it traffic to
the switch that takes it away.

Why `<container>:8080` on the project network: nginx reaches the replicas through Unix sockets
in a shared folder, which Prometheus cannot scrape (it speaks TCP only), and a per-slot path
through nginx would name the slot, not the replica, and mix two versions across a switch. Every
backend also listens on its container port, and Docker's DNS resolves the container name on the
project network, so the address stays right for as long as the container lives.

A replica becomes a target at the switch that gives it traffic (on_switch, called where the
proxy records a completed switch) and stops being one once it is drained: the containers switched
away from stay listed until the deploy's drains have finished (settle, at the end of every
executed plan), and a switch returns (so the old ones drain) only once Prometheus has scraped the
new ones, so the service's `up` has no gap across a switch.

Why a target's labels never change while it is listed (no slot label): Prometheus identifies a
target by its label set, so a changed label is a new target whose first scrape comes up to a
scrape interval after the old one's series went stale, a gap in that replica's `up` at every
switch (seen as `sum(up == 1)` dipping below the replica count during a deploy)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from flashfit_ops.config.model import Config
from flashfit_ops.monitoring import api, filesd
from flashfit_ops.plan.common import state_dir

MONITORING_DIR = "monitoring"
# Inside the Prometheus container, where .flashfit/monitoring/prometheus is mounted.
PROMETHEUS_CONFIG_DIR = "/etc/flashfit/prometheus"
TARGETS_RELATIVE = "targets/backend.json"


def monitoring_dir(config: Config) -> Path:
    return state_dir(config) / MONITORING_DIR


def targets_path(config: Config) -> Path:
    return monitoring_dir(config) / "prometheus" / TARGETS_RELATIVE


def targets_document(config: Config, slots: tuple[str, ...] | list[str], draining: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """One file_sd group per container: those the slots point to, then those just switched away
    from, still finishing their requests. The labels depend on the container alone (see above);
    the keeper makes its document with the same function (filesd)."""
    return filesd.document(config.project, (*slots, *draining))


def write_targets(config: Config, slots: tuple[str, ...] | list[str], draining: tuple[str, ...] | list[str] = ()) -> None:
    """A no-op unless monitoring is enabled."""
    if not config.monitoring.enabled:
        return
    filesd.write(targets_path(config), config.project, (*slots, *draining))


def on_switch(config: Config, slots: tuple[str, ...]) -> None:
    """After a completed switch: the new slots are targets at once; the containers switched away
    from stay targets while they drain, so `up` of the service never has a gap (see settle)."""
    if not config.monitoring.enabled:
        return
    write_targets(config, slots, [name for name in read_targets(config) if name not in slots])
    wait_scraped(config, slots)


# Prometheus batches discovery updates, and then scrape-pool reloads, for up to 5 s each; a new
# target's first scrape starts within one interval and takes up to one more (timeout <= interval).
APPLY_BATCHING = 10.0


def scrape_wait_limit(scrape_interval: float) -> float:
    """How long a switch waits for the new replicas to be scraped: twice the worst case above,
    for a loaded host. Only a Prometheus that fails to scrape them waits this long."""
    return 2 * (APPLY_BATCHING + 2 * scrape_interval)


def wait_scraped(
    config: Config,
    slots: tuple[str, ...],
    *,
    read: Callable[[], api.MonitoringView] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Hold the switch until Prometheus has scraped every new replica up (its discovery applies a
    changed file seconds later): only then may the old ones drain, so `up` of the service has no
    gap. Bounded, and never fails a deploy: a Prometheus that is not running (connection refused)
    ends the wait at once; a slow answer or a replica not scraped yet is polled again until the
    limit, then warned about (the doctor's business). True when every replica was seen up."""
    from flashfit_ops import console

    read = read or (lambda: api.read_view(config, timeout=2.0))
    deadline = clock() + scrape_wait_limit(config.monitoring.scrape_interval)
    wanted = sorted({name for name in slots if name})
    while True:
        view = read()
        if view.refused:
            return False
        missing = [name for name in wanted if view.targets.get(name) != "up"] if view.up else wanted
        if not missing:
            return True
        if clock() >= deadline:
            why = "" if view.up else f" ({view.error})"
            console.warn(f"Prometheus has not scraped {', '.join(missing)} yet{why}: the old replicas drain anyway")
            return False
        sleep(0.25)


def settle(config: Config) -> None:
    """At the end of a deploy, rollback or repair, when every drain has finished: exactly the
    containers the slots point to."""
    if not config.monitoring.enabled:
        return
    from flashfit_ops.proxy_files import read_files
    from flashfit_ops.plan.common import proxy_dir, sockets_dir

    write_targets(config, read_files(proxy_dir(config), sockets_dir(config)).applied)


def read_targets(config: Config) -> list[str]:
    """Container names in the targets file now (empty when there is none)."""
    try:
        groups = json.loads(targets_path(config).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return []
    return [g.get("labels", {}).get("container", "") for g in groups if isinstance(g, dict)]
