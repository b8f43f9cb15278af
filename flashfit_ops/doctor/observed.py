"""Which backends are live (get traffic). The seam between doctor and the deploy engine.

The deploy engine (flashfit_ops/execute/observe.py, plan/observed.py) records which upstreams
nginx last applied. When that module is importable we use its `Observed.live_names`; until then
(and whenever it cannot answer) live means: the backends named by the upstream block of the proxy
config on disk (.flashfit/proxy/nginx.conf), which is what nginx serves after its last reload.
None means "not known": callers then only require that some backend runs.
"""

from __future__ import annotations

from typing import Any

from flashfit_ops.doctor import nginxconf
from flashfit_ops.doctor.context import BACKEND_PORT, DoctorContext, container_names

PROXY_CONFIG_FILE = "nginx.conf"


def deploy_observed(ctx: DoctorContext) -> Any | None:
    """The deploy engine's Observed for this project (computed once per run), or None when it
    cannot tell. nginx -t is left to the nginx-config check (check_proxy_config=False)."""

    def compute() -> Any | None:
        try:
            from flashfit_ops.execute.backend import DockerBackend
            from flashfit_ops.execute.observe import observe
        except ImportError:
            return None
        try:
            return observe(DockerBackend(ctx.docker()), ctx.config, check_proxy_config=False)
        except Exception:  # noqa: BLE001 - the fallback below still answers
            return None

    return ctx.memo("deploy_observed", compute)


def proxy_config_text(ctx: DoctorContext) -> str | None:
    path = ctx.proxy_dir / PROXY_CONFIG_FILE
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def slot_links(ctx: DoctorContext) -> dict[str, str]:
    """{upstream address: container} for the replica slots of a deploy: nginx's upstream lists
    unix:/run/flashfit/slot-<n>.sock and its standby slots, each a link (in .flashfit/sockets) to one
    backend's socket."""
    try:
        from flashfit_ops.proxy_files import upstream_links
    except ImportError:
        return {}
    return upstream_links(ctx.proxy_dir.parent / "sockets")


def match_backend(address: str, backends: list[Any], slots: dict[str, str] | None = None) -> Any | None:
    """The backend container an upstream address points at (by name, alias or IP, or through a
    slot link), if any."""
    from flashfit_ops.doctor.context import container_ips

    if slots and address in slots:
        address = f"{slots[address]}:{BACKEND_PORT}"
    host, port = nginxconf.split_address(address)
    for container in backends:
        if host in container_names(container) or host in container_ips(container):
            if port in (None, BACKEND_PORT):
                return container
    return None


def live_backend_names(ctx: DoctorContext) -> set[str] | None:
    observed = deploy_observed(ctx)
    if observed is not None:
        names = set(getattr(observed, "live_names", ()) or ())
        if names:
            return names
    text = proxy_config_text(ctx)
    if not text:
        return None
    backends = ctx.backends()
    slots = slot_links(ctx)
    found = set()
    for servers in nginxconf.proxied_upstreams(text).values():
        for address in servers:
            container = match_backend(address, backends, slots)
            if container is not None:
                found.add(container.name)
    return found or None
