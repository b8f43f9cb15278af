"""GPUs, when resources.gpus asks for them: the engine can give them (NVIDIA runtime or CDI GPUs;
on Swarm, labelled nodes), each running backend was created with its device request and sees its
GPUs (nvidia-smi inside it: the driver is mounted), GPU memory has headroom, and the server
really runs on CUDA (its /health says which device). "Not configured" when no GPU is asked for."""

from __future__ import annotations

from typing import Any

from flashfit_contract import health as fields
from flashfit_ops.doctor.checks.http import backend_url
from flashfit_ops.doctor.context import DoctorContext, attrs_of
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine, failure, ok
from flashfit_ops.plan.common import GPU_NODE_LABEL, EngineGpus, gpu_problem, gpu_request, swarm_gpu_problem

MEMORY_WARN = 0.85
MEMORY_FAIL = 0.95
SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.used,memory.total", "--format=csv,noheader,nounits"]
ENGINE_HINT = "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`"
REDEPLOY_HINT = "`flashfit deploy` recreates the backends with resources.gpus"
IMAGE_HINT = "the GPU image: `flashfit build --gpu`, then `flashfit deploy`"
MEMORY_HINT = "lower MAX_BATCH_SIZE_CUDA or WORKERS (each worker holds its own models), or give the backend a larger GPU"

Part = tuple[str, str, str | None]


def parse_smi(output: str) -> list[dict[str, Any]]:
    """nvidia-smi's CSV rows (index, uuid, name, used MiB, total MiB) as dicts; bad rows skipped."""
    gpus = []
    for line in output.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5:
            continue
        try:
            used, total = int(float(cells[3])), int(float(cells[4]))
        except ValueError:
            continue
        gpus.append({"index": cells[0], "uuid": cells[1], "name": cells[2], "used_mib": used, "total_mib": total})
    return gpus


def judge_container(name: str, requested: int, smi: tuple[int, str] | None, health: dict[str, Any] | None) -> tuple[list[Part], dict]:
    """One running backend: what nvidia-smi inside it and its /health say, against the request."""
    parts: list[Part] = []
    entry: dict[str, Any] = {}
    if smi is None or smi[0] != 0:
        why = (smi[1].strip().splitlines() or ["no output"])[-1][:160] if smi else "could not run"
        parts.append((FAILURE, f"{name} sees no GPU (nvidia-smi: {why})", REDEPLOY_HINT))
    else:
        gpus = parse_smi(smi[1])
        entry["gpus"] = gpus
        if len(gpus) < requested:
            parts.append((FAILURE, f"{name} sees {len(gpus)} GPU(s), {requested} requested", REDEPLOY_HINT))
        for gpu in gpus:
            fraction = gpu["used_mib"] / gpu["total_mib"] if gpu["total_mib"] else 0.0
            usage = f"{name} GPU {gpu['index']} memory {fraction:.0%} used ({gpu['used_mib']}/{gpu['total_mib']} MiB)"
            if fraction >= MEMORY_FAIL:
                parts.append((FAILURE, usage, MEMORY_HINT))
            elif fraction >= MEMORY_WARN:
                parts.append((WARNING, usage, MEMORY_HINT))
    device = (health or {}).get(fields.DEVICE) if isinstance(health, dict) else None
    entry["server_device"] = device
    if not isinstance(device, dict):
        parts.append((WARNING, f"{name} /health does not say its device (an older server, or not answering)", IMAGE_HINT))
    elif device.get("type") != "cuda":
        parts.append((FAILURE, f"{name} runs its models on {device.get('type') or 'no device yet'}, not CUDA", IMAGE_HINT))
    return parts or [(OK, name, None)], entry


def _engine_gpus(ctx: DoctorContext) -> EngineGpus:
    info = ctx.docker().info()
    cdi = [str(d.get("ID", "")) for d in info.get("DiscoveredDevices") or [] if isinstance(d, dict)]
    ids = [d.split("=", 1)[1] for d in cdi if d.startswith("nvidia.com/gpu=") and not d.endswith("=all")]
    return EngineGpus(runtimes=tuple(sorted(info.get("Runtimes") or {})), cdi_gpus=tuple(ids))


def _health(ctx: DoctorContext, container: Any) -> dict[str, Any] | None:
    url = backend_url(ctx, container)
    if url is None:
        return None
    try:
        with ctx.http() as client:
            body = client.get(url + ctx.config.healthcheck.liveness_path).json()
    except Exception:  # noqa: BLE001 - no answer is reported as "does not say its device"
        return None
    return body if isinstance(body, dict) else None


@check("gpu", "GPUs: engine runtime, devices in each backend, GPU memory, the server on CUDA", timeout=15.0)
def gpu(ctx: DoctorContext) -> Finding:
    request = gpu_request(ctx.config)
    if request is None:
        return ok("not configured (resources.gpus is not set)", configured=False)
    requested = len(request.device_ids) or request.count
    if ctx.config.target == "swarm":
        nodes = len(ctx.docker().nodes.list(filters={"node.label": f"{GPU_NODE_LABEL}=true"}))
        problem = swarm_gpu_problem(ctx.config, nodes)
        if problem:
            return failure(problem, f"docker node update --label-add {GPU_NODE_LABEL}=true NODE")
    else:
        problem = gpu_problem(ctx.config, _engine_gpus(ctx))
        if problem:
            return failure(problem, ENGINE_HINT)
    backends = ctx.backends(running_only=True)
    if not backends:
        return failure("no backend container is running", "`flashfit deploy`")
    parts: list[Part] = []
    details: dict[str, Any] = {"configured": True, "requested": requested, "containers": {}}
    for container in backends:
        requests = (attrs_of(container).get("HostConfig") or {}).get("DeviceRequests") or []
        if ctx.config.target != "swarm" and not requests:
            parts.append((FAILURE, f"{container.name} was created without a GPU request", REDEPLOY_HINT))
            continue
        try:
            result = ctx.exec(container, SMI_QUERY)
        except Exception as error:  # noqa: BLE001 - no nvidia-smi in the container is an answer too
            smi: tuple[int, str] | None = (127, f"{type(error).__name__}: {error}")
        else:
            if result.exit_code is None or result.problem:  # an unread answer is not "no GPU"
                why = result.problem or "the engine did not report how it ended"
                parts.append((FAILURE, f"could not read nvidia-smi in {container.name}: {why}",
                              "rerun `flashfit doctor --check gpu`"))
                continue
            smi = (result.exit_code, result.text())
        found, entry = judge_container(container.name, requested, smi, _health(ctx, container))
        parts.extend(found)
        details["containers"][container.name] = entry
    summary = ", ".join(
        f"{name} on {', '.join(g['name'] for g in e.get('gpus', [])) or 'no GPU'}" for name, e in details["containers"].items()
    )
    return combine(parts, summary or "GPUs configured", **details)
