"""The proxy: `nginx -t` inside its container, and whether the upstream it routes to is the set of
live, running backends."""

from __future__ import annotations

from typing import Any

from flashfit_ops.doctor import nginxconf
from flashfit_ops.doctor.context import DoctorContext, attrs_of, labels_of, state_of, LABEL_COLOR
from flashfit_ops.doctor.observed import deploy_observed, match_backend, proxy_config_text, slot_links
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, failure, ok
from flashfit_ops.engine.execs import ExecOutput

NO_PROXY_HINT = "`flashfit deploy` starts the proxy; `docker logs {name}` says why it stopped"


def nginx_command(container: Any) -> list[str]:
    attrs = attrs_of(container)
    return [attrs.get("Path") or "", *(attrs.get("Args") or [])]


def evaluate_test(exit_code: int | None, output: str, name: str) -> Finding:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if exit_code is None:
        return failure("could not run nginx -t: the engine did not report how it ended",
                       f"run `docker exec {name} nginx -t` by hand", output=lines)
    if exit_code == 0:
        return ok(f"{name}: configuration test is successful", output=lines)
    problem = next((line for line in lines if "[emerg]" in line or "[error]" in line), lines[0] if lines else "no output")
    problem = problem.split("] ", 1)[-1] if "] " in problem else problem
    return failure(
        f"nginx -t fails: {problem}",
        "fix the proxy config (.flashfit/proxy/nginx.conf) and do not reload until `nginx -t` passes; "
        "a deploy re-renders it",
        output=lines,
    )


def _proxy_or_failure(ctx: DoctorContext) -> tuple[Any | None, Finding | None]:
    proxy = ctx.proxy()
    name = f"{ctx.project}-proxy"
    if proxy is None:
        return None, failure("no proxy container", NO_PROXY_HINT.format(name=name))
    if state_of(proxy) != "running":
        return None, failure(f"{proxy.name} is {state_of(proxy)}", NO_PROXY_HINT.format(name=proxy.name))
    return proxy, None


@check("nginx-config", "`nginx -t` inside the proxy container", timeout=10.0)
def nginx_config(ctx: DoctorContext) -> Finding:
    proxy, problem = _proxy_or_failure(ctx)
    if problem or proxy is None:
        return problem or failure("no proxy container", NO_PROXY_HINT.format(name=f"{ctx.project}-proxy"))
    args = nginxconf.config_args(nginx_command(proxy))
    result = ctx.exec(proxy, ["nginx", "-t", *args])
    return evaluate_test(result.exit_code, result.text(), proxy.name)


def evaluate_upstream(
    servers: dict[str, list[str]],
    backends: list[Any],
    applied: tuple[str, ...] | None,
    slots: dict[str, str] | None = None,
) -> Finding:
    """Every upstream server must be a running backend of the project; every running backend
    should be in the upstream; the upstream should be what the deploy engine last applied.
    `slots`: {unix:/run/flashfit/slot-<n>.sock: container} for a deploy's replica slots."""
    parts: list[tuple[str, str, str | None]] = []
    routed: list[str] = []
    colors: set[str] = set()
    rows: list[dict[str, Any]] = []
    if not any(servers.values()):
        return failure("the proxy config has no upstream servers", "`flashfit deploy` re-renders the proxy config")
    for upstream, addresses in servers.items():
        for address in addresses:
            container = match_backend(address, backends, slots)
            if container is None:
                rows.append({"upstream": upstream, "server": address, "backend": None})
                if slots is not None and address.startswith("unix:"):
                    target = slots.get(address)
                    what = f"points at {target}, which is not a backend of this project" if target else "is not linked to a backend"
                    parts.append((FAILURE, f"slot {address.rsplit('/', 1)[-1]} {what}",
                                  "`flashfit deploy` (or `flashfit status`, which repairs) links every slot to a live backend"))
                else:
                    parts.append((FAILURE, f"upstream {address} is not a backend of this project",
                                  "`flashfit deploy` re-renders nginx.conf for the live backends"))
                continue
            rows.append({"upstream": upstream, "server": address, "backend": container.name,
                         "state": state_of(container)})
            routed.append(container.name)
            colors.add(labels_of(container).get(LABEL_COLOR, "?"))
            if state_of(container) != "running":
                parts.append((FAILURE, f"upstream {address} points at {container.name}, which is {state_of(container)}",
                              "`flashfit deploy` (or `flashfit rollback`) switches nginx to running backends"))
    idle = [c.name for c in backends if state_of(c) == "running" and c.name not in routed]
    if idle:
        parts.append((WARNING, f"running but not in the upstream: {', '.join(idle)}",
                      "a deploy that did not finish? `flashfit deploy` settles it; or stop them"))
    if applied is not None and applied and set(applied) != set(routed) and routed:
        parts.append((WARNING, f"nginx.conf routes to {', '.join(sorted(routed))} but the last applied switch was "
                      f"{', '.join(applied)}", "a switch was interrupted: `flashfit deploy` repairs it"))
    color = ", ".join(sorted(colors)) or "?"
    details = {"servers": rows, "live_color": color, "idle_running": idle, "applied": list(applied or [])}
    routes = [
        f"{row['server'].rsplit('/', 1)[-1].removesuffix('.sock')} -> {row['backend']}" if row["server"].startswith("unix:") else row["backend"]
        for row in rows
        if row["backend"]
    ]
    return combine(parts, f"routes to {', '.join(routes)} (color {color})", **details)


DUMP_MARK = "# configuration file "
UNREADABLE_HINT = "`docker exec {name} nginx -T` shows what nginx loads; rerun `flashfit doctor --check upstream`"


def dumped_config(result: ExecOutput) -> tuple[str | None, str]:
    """The configuration `nginx -T` printed (stdout), or None and why it cannot be used. nginx
    prints its files only after the test passed, each after a `# configuration file <path>:` line."""
    if result.problem:
        return None, f"nginx -T: {result.problem}"
    errors = [line.strip() for line in result.stderr.decode("utf-8", "replace").splitlines() if "[emerg]" in line]
    if result.exit_code not in (0, None):
        return None, f"nginx -T exited {result.exit_code}" + (f": {errors[0].split('] ', 1)[-1]}" if errors else "")
    text = result.stdout.decode("utf-8", "replace")
    if DUMP_MARK not in text:
        return None, f"nginx -T printed no configuration ({len(result.output)} bytes of output)"
    return text, ""


def running_upstreams(ctx: DoctorContext, proxy: Any) -> tuple[dict[str, list[str]] | None, str, list[str]]:
    """The upstream blocks nginx would load: `nginx -T` in the proxy; the file on disk when -T
    cannot say (nginx rejects the file, or its output did not come back whole). Returns
    (servers or None when neither is readable, where they were read, why a source was not used)."""
    args = nginxconf.config_args(nginx_command(proxy))
    text, why = dumped_config(ctx.exec(proxy, ["nginx", "-T", *args]))
    if text is not None:
        return nginxconf.proxied_upstreams(text), "nginx -T", []
    path = ctx.proxy_dir / "nginx.conf"
    on_disk = proxy_config_text(ctx)
    if on_disk is not None:
        return nginxconf.proxied_upstreams(on_disk), str(path), [why]
    return None, "nothing readable", [why, f"{path} is unreadable"]


@check("upstream", "The proxy's upstream matches the live color's running backends", timeout=10.0)
def upstream(ctx: DoctorContext) -> Finding:
    proxy, problem = _proxy_or_failure(ctx)
    if problem:
        return problem
    servers, source, unread = running_upstreams(ctx, proxy)
    if servers is None:
        return failure(f"could not read the proxy config: {'; '.join(unread)}",
                       UNREADABLE_HINT.format(name=getattr(proxy, "name", f"{ctx.project}-proxy")),
                       source=source, unread=unread)
    observed = deploy_observed(ctx)
    applied = tuple(getattr(getattr(observed, "proxy", None), "applied", ()) or ()) if observed is not None else None
    finding = evaluate_upstream(servers, ctx.backends(), applied, slot_links(ctx))
    finding.details["source"] = source
    if unread:
        finding.details["unread"] = unread
    return finding
