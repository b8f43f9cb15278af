"""Doctor on `target: swarm`: checks that read containers on this engine answer from the swarm's
own view instead (tasks per node, backend /ready probed from inside a task, the proxy service),
so a healthy multi-node stack has no false failures and a node down is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashfit_ops.config.load import resolve
from flashfit_ops.doctor.checks import swarm
from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.result import FAILURE, OK
from flashfit_ops.engine.execs import ExecOutput


def node(node_id: str, state: str = "ready") -> Any:
    return Obj(node_id, {"Description": {"Hostname": f"host-{node_id}"}, "Status": {"State": state}, "Spec": {}})


def task(task_id: str, node_id: str, state: str = "running", address: str = "10.0.1.5", err: str | None = None) -> dict:
    network = {"Network": {"Spec": {"Labels": {"com.docker.stack.namespace": "demo"}}}, "Addresses": [f"{address}/24"]}
    return {"ID": task_id * 12, "NodeID": node_id, "Status": {"State": state, "Err": err}, "NetworksAttachments": [network]}


@dataclass
class Obj:
    id: str
    attrs: dict
    task_list: list = field(default_factory=list)

    def tasks(self, filters=None):
        return self.task_list


@dataclass
class Exec:
    exit_code: int
    output: bytes = b""


@dataclass
class TaskContainer:
    codes: dict  # url or command -> exit code
    ran: list = field(default_factory=list)

    def exec_run(self, argv):
        self.ran.append(argv)
        return Exec(self.codes.get(argv[-1], self.codes.get(argv[0], 0)))


class FakeSwarm:
    def __init__(self, nodes, services, local):
        self.nodes = self._list(nodes)
        self._services = {s.attrs["Spec"]["Name"]: s for s in services}
        self.services = self
        self.local = local  # service name -> the task container on this engine
        self.containers = self

    @staticmethod
    def _list(items):
        return type("L", (), {"list": staticmethod(lambda **_: list(items))})()

    def list(self, filters=None, **_):
        label = (filters or {}).get("label", "")
        if label.startswith("com.docker.swarm.service.name="):
            found = self.local.get(label.split("=", 1)[1])
            return [found] if found else []
        return list(self._services.values())

    def get(self, name):
        return self._services[name]


def service(name: str, tasks: list, ports=()) -> Obj:
    return Obj(name, {"Spec": {"Name": name}, "Endpoint": {"Ports": [{"PublishedPort": p} for p in ports]}}, tasks)


def ctx_for(client) -> DoctorContext:
    cfg = resolve({"project": "demo", "target": "swarm", "ports": {"http": 19080}}, environ={})
    ctx = DoctorContext(cfg, None, docker_factory=lambda: client)
    ctx.exec = run_in  # type: ignore[method-assign]  # the fake task containers answer exec_run
    return ctx


def run_in(container: Any, argv: list[str]) -> ExecOutput:
    done = container.exec_run(argv)
    return ExecOutput(done.exit_code, done.output, done.output, b"")


def healthy(node3: str = "ready", probe_codes=None) -> FakeSwarm:
    backend = service("demo_backend", [task("a", "n1", address="10.0.1.5"), task("b", "n2", address="10.0.1.6"), task("c", "n3", address="10.0.1.7")])
    proxy = service("demo_nginx", [task("p", "n1", address="10.0.1.2")], ports=(19080,))
    local = {"demo_backend": TaskContainer(probe_codes or {}), "demo_nginx": TaskContainer({"nginx": 0})}
    return FakeSwarm([node("n1"), node("n2"), node("n3", node3)], [backend, proxy], local)


def run(name: str, client) -> Any:
    ctx = ctx_for(client)
    return swarm.for_target(name, lambda _ctx: None, ctx)(ctx)


def test_a_healthy_stack_has_no_failures_in_the_container_checks() -> None:
    client = healthy()
    for name in ("containers", "backend-health", "nginx-config", "ports", "upstream", "resources", "stores", "disk", "inference"):
        found = run(name, client)
        assert found.status == OK, (name, found.summary)
    assert run("containers", client).summary == "demo_backend: 3 on host-n1, host-n2, host-n3; demo_nginx: 1 on host-n1"
    probes = client.local["demo_backend"].ran
    assert [argv[-1] for argv in probes] == [f"http://10.0.1.{i}:8080/ready" for i in (5, 6, 7)]
    assert probes[0][:2] == ["flashfit-server", "probe"]


def test_a_node_down_and_a_task_not_ready_are_named() -> None:
    client = healthy(node3="down", probe_codes={"http://10.0.1.6:8080/ready": 1})
    tasks = run("containers", client)
    assert tasks.status == FAILURE and "demo_backend: task on node host-n3, which is down" in tasks.summary
    ready = run("backend-health", client)
    assert ready.status == FAILURE and f"task {'b' * 12} at 10.0.1.6 is not ready" in ready.summary


def test_the_proxy_service_missing_or_failing_nginx_t() -> None:
    client = healthy()
    client.local["demo_nginx"] = TaskContainer({"nginx": 1})
    assert run("nginx-config", client).status == FAILURE
    client._services["demo_nginx"].task_list = []
    assert "no running task" in run("nginx-config", client).summary


def test_local_target_keeps_the_container_checks() -> None:
    cfg = resolve({"project": "demo"}, environ={})
    ctx = DoctorContext(cfg, None, docker_factory=lambda: None)
    original = object()
    assert swarm.for_target("containers", original, ctx) is original


def test_proxy_probed_at_the_manager_docker_host(monkeypatch) -> None:
    ctx = ctx_for(healthy())
    monkeypatch.setenv("DOCKER_HOST", "ssh://ops@manager.example.com")
    assert ctx.proxy_base_url == "http://manager.example.com:19080"
    monkeypatch.delenv("DOCKER_HOST")
    assert ctx.proxy_base_url == "http://127.0.0.1:19080"


def test_proxy_host_follows_docker_host() -> None:
    from flashfit_ops.swarm.address import proxy_host

    assert proxy_host({"DOCKER_HOST": "tcp://10.0.0.10:2376"}) == "10.0.0.10"
    assert proxy_host({"DOCKER_HOST": "ssh://ops@manager.example.com"}) == "manager.example.com"
    assert proxy_host({"DOCKER_HOST": "unix:///var/run/docker.sock"}) == "127.0.0.1"
    assert proxy_host({}) == "127.0.0.1"


def test_the_deploy_probes_the_proxy_on_the_manager(tmp_path) -> None:
    from flashfit_ops.swarm.deploy import prepare
    from flashfit_ops.swarm.plan import ProbeThroughProxy, SwarmObserved, plan_swarm_deploy

    cfg = resolve({"project": "demo", "target": "swarm", "ports": {"http": 8088}}, base_dir=tmp_path, environ={})
    materials = prepare(cfg, "v1", environ={"JWT_SECRET_KEY": "x" * 32})
    observed = SwarmObserved(swarm_active=True, is_manager=True)
    steps = plan_swarm_deploy(cfg, observed, materials.stack, object_names=materials.object_names,
                              digests=materials.digests, proxy_host="manager.example.com")
    probe = next(s for s in steps if isinstance(s, ProbeThroughProxy))
    assert probe.url == "http://manager.example.com:8088/ready"


def test_a_probe_whose_output_was_cut_still_counts_its_exit_code() -> None:
    """A cut exec output loses the body, not the answer: the probe's exit code is the verdict."""
    from flashfit_ops.doctor.swarm_tasks import probe_from

    def said(exit_code: int, problem: str | None):
        out = b"probe http://10.0.1.5:8080/health: 200\n{\"status\": \"healthy\"}"
        return lambda _inside, _argv: ExecOutput(exit_code, out, out, b"", problem)

    cut = "the output stream was cut short (3 of a 40-byte frame)"
    assert probe_from(said(0, None), None, "10.0.1.5", "/ready") == (True, "")
    assert probe_from(said(0, cut), None, "10.0.1.5", "/ready") == (True, "")
    assert probe_from(said(0, None), None, "10.0.1.5", "/health", body=True) == (True, '{"status": "healthy"}')
    assert probe_from(said(0, cut), None, "10.0.1.5", "/health", body=True) == (True, "")  # answered, body not whole
    assert probe_from(said(1, None), None, "10.0.1.5", "/ready") == (False, "")
