"""Engine (labels) + proxy folder -> Observed. The engine is the source of truth for containers;
the proxy folder says which of them nginx serves."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.execute.proxy import ProxyController, read_files
from flashfit_ops.plan.common import (
    LABEL_COLOR,
    LABEL_DEPLOY,
    LABEL_REPLICA,
    LABEL_ROLE,
    LABEL_VERSION,
    ROLE_BACKEND,
    SOCKET_DIR,
    proxy_dir,
    proxy_name,
)
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState


def observe(backend, config: Config, *, check_proxy_config: bool = True) -> Observed:
    infos = backend.list_containers(config.project)
    containers = []
    proxy_info = None
    pname = proxy_name(config.project)
    for info in infos:
        role = info.labels.get(LABEL_ROLE)
        if info.name == pname:
            proxy_info = info
            continue
        if role != ROLE_BACKEND:
            continue
        try:
            replica = int(info.labels.get(LABEL_REPLICA, "0"))
        except ValueError:
            replica = 0
        containers.append(
            ContainerState(
                name=info.name,
                color=info.labels.get(LABEL_COLOR, ""),
                version=info.labels.get(LABEL_VERSION, ""),
                replica=replica,
                deploy_id=info.labels.get(LABEL_DEPLOY, ""),
                state=info.state,
                image=info.image,
                exit_code=info.exit_code,
            )
        )
    files = read_files(proxy_dir(config))
    config_names = files.config
    if proxy_info is not None and proxy_info.state == "running" and files.config_present and check_proxy_config:
        # An invalid nginx.conf (edited by hand, or a bug) counts as absent: the next switch
        # rewrites it. The file the last switch left needs no `nginx -t`: nginx runs it.
        if not files.config_unchanged and not ProxyController(backend, config).config_is_valid():
            config_names = ()
    applied = files.applied if files.applied_present else config_names
    proxy = ProxyState(
        name=pname,
        exists=proxy_info is not None,
        state=proxy_info.state if proxy_info is not None else "missing",
        applied=applied,
        config=config_names,
        config_present=files.config_present and bool(config_names),
        stray_files=files.stray,
        served=files.served,
        legacy=proxy_info is not None and SOCKET_DIR not in proxy_info.mount_targets,
        slot_count=files.slot_count,
        settings_current=files.text is not None and files.text == ProxyController(backend, config).render(files.slot_count or 1),
    )
    containers.sort(key=lambda c: (c.deploy_id, c.replica, c.name))
    return Observed(
        project=config.project,
        containers=tuple(containers),
        proxy=proxy,
        network_exists=backend.network_exists(config.network_name),
    )
