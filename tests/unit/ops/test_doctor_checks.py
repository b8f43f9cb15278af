"""Pure check logic of `flashfit doctor`, with fakes at the seams (no Docker, no network)."""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from flashfit_ops.config.load import resolve
from flashfit_ops.doctor import nginxconf, promtext
from flashfit_ops.doctor.checks import backup, containers, disk, engine, http, lock, nginx, ports, resources, stores, tls
from flashfit_ops.doctor.context import DoctorContext, Settings
from flashfit_ops.doctor.result import FAILURE, OK, WARNING
from flashfit_ops.engine.execs import ExecOutput

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


@dataclass
class FakeExec:
    exit_code: int
    output: Any


@dataclass
class FakeContainer:
    name: str
    attrs: dict
    exec_results: dict = field(default_factory=dict)

    def exec_run(self, argv, demux=False):
        return self.exec_results[tuple(argv[:2])]


def container(name, role="backend", status="running", color="blue", ip="172.30.0.5", **extra) -> FakeContainer:
    state = {"Status": status, "OOMKilled": extra.pop("oom", False), "ExitCode": extra.pop("exit_code", 0)}
    if "health" in extra:
        state["Health"] = {"Status": extra.pop("health")}
    attrs = {
        "Id": "abcdef0123456789",
        "Name": f"/{name}",
        "State": state,
        "RestartCount": extra.pop("restarts", 0),
        "Config": {"Labels": {"io.flashfit.project": extra.pop("project", "demo"), "io.flashfit.role": role,
                              "io.flashfit.color": color, "io.flashfit.version": "v1"}, "Hostname": "abcdef012345"},
        "NetworkSettings": {"Networks": {"demo_net": {"IPAddress": ip, "Aliases": [name], "DNSNames": [name]}},
                            "Ports": extra.pop("ports", {})},
        "HostConfig": extra.pop("host_config", {}),
        "Mounts": extra.pop("mounts", []),
        "Path": extra.pop("path", "nginx"),
        "Args": extra.pop("args", []),
    }
    return FakeContainer(name, attrs, extra.pop("exec_results", {}))


def config(**data):
    return resolve({"project": "demo", **data}, environ={})


# --- engine ----------------------------------------------------------------------------------------


def test_engine_warnings_are_a_warning_and_a_clean_engine_is_ok():
    clean = engine.evaluate_info({"Warnings": None, "Driver": "overlay2"}, {"Version": "27.1", "ApiVersion": "1.46"})
    assert clean.status == OK and "27.1" in clean.summary
    warned = engine.evaluate_info({"Warnings": ["WARNING: No swap limit support", "WARNING: bridge-nf"]}, {"Version": "27"})
    assert warned.status == WARNING
    assert "No swap limit support (+1 more)" in warned.summary
    assert warned.hint


# --- containers ------------------------------------------------------------------------------------


def test_containers_all_running_is_ok():
    found = containers.evaluate([container("demo-backend-blue-1-a"), container("demo-proxy", role="proxy")], None)
    assert found.status == OK


def test_a_stopped_live_backend_is_a_failure_naming_it():
    found = containers.evaluate(
        [container("demo-backend-blue-1-a", status="exited", exit_code=137), container("demo-proxy", role="proxy")],
        {"demo-backend-blue-1-a"},
    )
    assert found.status == FAILURE
    assert "demo-backend-blue-1-a is exited (exit 137)" in found.summary
    assert "docker logs demo-backend-blue-1-a" in found.hint


def test_without_a_live_record_no_running_backend_is_a_failure_but_a_retained_one_is_fine():
    stopped = container("demo-backend-blue-1-a", status="exited")
    assert containers.evaluate([stopped, container("demo-proxy", role="proxy")], None).status == FAILURE
    running = container("demo-backend-green-1-b", color="green", ip="172.30.0.6")
    assert containers.evaluate([stopped, running, container("demo-proxy", role="proxy")], None).status == OK


def test_oom_unhealthy_restarts_and_missing_proxy():
    assert containers.evaluate([container("b", oom=True, status="exited"), container("p", role="proxy")], {"b"}).summary.startswith("b was OOM-killed")
    unhealthy = containers.evaluate([container("b", health="unhealthy"), container("p", role="proxy")], None)
    assert unhealthy.status == FAILURE and "unhealthy" in unhealthy.summary
    restarts = containers.evaluate([container("b", restarts=3), container("p", role="proxy")], None)
    assert restarts.status == WARNING and "restarted 3 times" in restarts.summary
    no_proxy = containers.evaluate([container("b")], None)
    assert no_proxy.status == FAILURE and "no proxy" in no_proxy.summary
    assert containers.evaluate([], None).status == FAILURE


# --- ports -----------------------------------------------------------------------------------------


def test_a_port_held_by_our_container_is_ok_by_another_project_or_process_a_failure():
    needed = {"ports.http": 19080, "ports.https": 19443, "ports.grafana": 19300}
    publishers = {19080: [("demo-proxy", "demo")], 19443: [("other-proxy", "other")]}
    found = ports.evaluate(needed, "demo", publishers, probe=lambda port: ports.FREE)
    assert found.status == FAILURE
    assert "19443 (ports.https) is published by other-proxy (project other)" in found.summary
    assert found.details["ports"]["ports.http"]["state"] == "ours"
    taken = ports.evaluate({"ports.http": 19080}, "demo", {}, probe=lambda port: ports.IN_USE,
                           holder=lambda port: "pid 42 (python3)")
    assert taken.status == FAILURE and "taken by pid 42 (python3)" in taken.summary and "ports.http" in taken.hint
    assert ports.evaluate({"ports.http": 19080}, "demo", {}, probe=lambda port: ports.FREE).status == OK


def test_probe_port_sees_a_bound_socket():
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    port = sock.getsockname()[1]
    try:
        assert ports.probe_port(port) == ports.IN_USE
    finally:
        sock.close()
    assert ports.probe_port(port) == ports.FREE


def test_published_by_reads_port_bindings_of_running_containers():
    proxy = container("demo-proxy", role="proxy", ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "19080"},
                                                                    {"HostIp": "::", "HostPort": "19080"}]})
    stopped = container("x", status="exited", ports={"80/tcp": [{"HostPort": "19081"}]})
    assert ports.published_by([proxy, stopped]) == {19080: [("demo-proxy", "demo")]}


# --- health, latency, inference, bench -------------------------------------------------------------


def _transport(routes: dict[str, tuple[int, Any]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        key = f"{request.url.host}:{request.url.port}{request.url.path}"
        if key not in routes:
            raise httpx.ConnectError("connection refused", request=request)
        status, body = routes[key]
        return httpx.Response(status, json=body) if not isinstance(body, str) else httpx.Response(status, text=body)

    return httpx.MockTransport(handler)


HEALTHY = {"status": "healthy", "models": {"clip_loaded": True, "blip_loaded": True, "fashion_loaded": True},
           "vector_stores": {"clip_index_size": 3, "blip_index_size": 3, "fashion_index_size": 3}}


class FakeExecApi:
    """The engine's exec endpoints as engine.execs.run calls them (by container name), answering
    from each fake container's exec_run: its output as the engine's multiplexed frames."""

    def __init__(self, items):
        self._items = items
        self._runs = []

    def exec_create(self, container, cmd, **options):
        self._runs.append(next(c for c in self._items if c.name == container).exec_run(cmd))
        return {"Id": str(len(self._runs) - 1)}

    def _url(self, template, *args):
        return template.format(*args)

    def _post_json(self, url, data, **options):
        output = self._runs[int(url.split("/")[2])].output
        streams = zip((1, 2), output) if isinstance(output, tuple) else [(1, output)]
        body = b"".join(struct.pack(">BxxxL", n, len(chunk)) + chunk for n, chunk in streams if chunk)
        return type("Response", (), {"content": body})()

    def _raise_for_status(self, response):
        pass

    def exec_inspect(self, exec_id):
        return {"Running": False, "ExitCode": self._runs[int(exec_id)].exit_code}


class FakeClient:
    def __init__(self, items):
        self.containers = self
        self._items = items
        self.api = FakeExecApi(items)

    def list(self, all=False, filters=None, ignore_removed=False):  # noqa: A002
        return list(self._items)


def ctx_with(items, routes, cfg=None, tmp_path: Path | None = None) -> DoctorContext:
    cfg = cfg or config(ports={"http": 19080})
    if tmp_path is not None:
        cfg._base_dir = tmp_path
    return DoctorContext(cfg, None, docker_factory=lambda: FakeClient(items), http_transport=_transport(routes),
                         settings=Settings(latency_requests=5), now=lambda: NOW)


def test_proxy_health_ok_and_not_ready_names_the_models():
    ok_ctx = ctx_with([], {"127.0.0.1:19080/health": (200, HEALTHY), "127.0.0.1:19080/ready": (200, {"status": "ready"})})
    assert http.proxy_health(ok_ctx).status == OK
    loading = dict(HEALTHY, models={"clip_loaded": True, "blip_loaded": False, "fashion_loaded": False})
    not_ready = ctx_with([], {
        "127.0.0.1:19080/health": (200, loading),
        "127.0.0.1:19080/ready": (503, {"status": "not_ready", "checks": {"models_loaded": False, "vector_stores_ready": True}}),
    })
    found = http.proxy_health(not_ready)
    assert found.status == FAILURE
    assert "models not loaded: blip, fashion" in found.summary
    assert found.details["models_not_loaded"] == ["blip", "fashion"]


def test_proxy_health_bad_gateway_and_no_answer():
    gateway = http.proxy_health(ctx_with([], {"127.0.0.1:19080/health": (502, "<html>bad gateway</html>"),
                                              "127.0.0.1:19080/ready": (502, "<html></html>")}))
    assert gateway.status == FAILURE and "no backend behind it answers" in gateway.summary
    down = http.proxy_health(ctx_with([], {}))
    assert down.status == FAILURE and "does not answer" in down.summary


def test_backend_health_probes_each_backend_by_ip():
    items = [container("demo-backend-blue-1-a", ip="172.30.0.5"), container("demo-backend-blue-2-a", ip="172.30.0.6"),
             container("demo-proxy", role="proxy", ip="172.30.0.2")]
    routes = {"172.30.0.5:8080/health": (200, HEALTHY), "172.30.0.5:8080/ready": (200, {}),
              "172.30.0.6:8080/health": (200, HEALTHY)}
    found = http.backend_health(ctx_with(items, routes))
    assert found.status == FAILURE
    assert "demo-backend-blue-2-a /ready does not answer" in found.summary
    routes["172.30.0.6:8080/ready"] = (200, {})
    assert http.backend_health(ctx_with(items, routes)).status == OK


def test_latency_thresholds():
    assert http.percentile([0.1, 0.2, 0.3, 0.4], 50) == 0.2
    assert http.percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert http.evaluate_latency([0.01] * 20, [], 0, 1.0, 20).status == OK
    slow_tail = http.evaluate_latency([0.01] * 18 + [2.0, 2.0], [], 0, 1.0, 20)
    assert slow_tail.status == WARNING and "p95 over the 1s" in slow_tail.summary
    assert http.evaluate_latency([2.0] * 20, [], 0, 1.0, 20).status == FAILURE
    assert http.evaluate_latency([0.01] * 19, ["HTTP 500"], 0, 1.0, 20).status == FAILURE
    assert http.evaluate_latency([], [], 20, 1.0, 20).status == WARNING
    assert http.evaluate_latency([], ["ConnectError"], 0, 1.0, 20).status == FAILURE


def test_latency_check_goes_through_nginx():
    ctx = ctx_with([], {"127.0.0.1:19080/api/items": (200, {"items": []})})
    found = http.latency(ctx)
    assert found.status == OK and found.details["requests"] == 5


METRICS = """# HELP model_inference_duration_seconds Model time
# TYPE model_inference_duration_seconds histogram
model_inference_duration_seconds_bucket{le="0.1",model_name="clip"} 8.0
model_inference_duration_seconds_bucket{le="0.5",model_name="clip"} 10.0
model_inference_duration_seconds_bucket{le="+Inf",model_name="clip"} 10.0
model_inference_duration_seconds_sum{model_name="clip"} 0.9
model_inference_duration_seconds_count{model_name="clip"} 10.0
model_inference_duration_seconds_bucket{le="0.1",model_name="blip"} 0.0
model_inference_duration_seconds_bucket{le="+Inf",model_name="blip"} 2.0
model_inference_duration_seconds_sum{model_name="blip"} 2.4
model_inference_duration_seconds_count{model_name="blip"} 2.0
http_requests_total{endpoint="/health",method="GET",status="200"} 5.0
"""


def test_inference_means_per_model_against_the_threshold():
    found = http.evaluate_inference({"b1": METRICS}, threshold=0.5)
    assert found.status == WARNING
    assert "blip averages 1200 ms" in found.summary
    assert found.details["models"]["clip"] == {"count": 10, "mean_s": 0.09, "p95_s": 0.4}
    assert http.evaluate_inference({"b1": METRICS}, threshold=2.0).status == OK
    assert "no inference recorded yet" in http.evaluate_inference({"b1": "http_requests_total 1\n"}, 0.5).summary


def test_prometheus_quantile_interpolates_like_histogram_quantile():
    assert promtext.quantile(0.5, [(0.1, 5.0), (0.2, 10.0), (float("inf"), 10.0)]) == pytest.approx(0.1)
    assert promtext.quantile(0.95, [(1.0, 0.0), (float("inf"), 4.0)]) == 1.0
    assert promtext.quantile(0.5, []) is None


def test_store_bench_output_parsing():
    out = ("clip     flat  n=120      p50=  0.050 ms  p95=  0.080 ms  qps(single)= 20000.0  qps(batch 64)= 1.0\n"
           "blip     flat  n=120      p50=250.000 ms  p95=300.000 ms  qps(single)=     4.0  qps(batch 64)= 1.0\n"
           "fashion: empty\n")
    found = http.evaluate_bench(0, out, "")
    assert found.status == WARNING and "blip search p95 300 ms" in found.summary
    assert found.details["stores"]["clip"]["p95_ms"] == 0.08
    assert found.details["empty"] == ["fashion"]
    empty = http.evaluate_bench(1, "clip: empty\nblip: empty\nfashion: empty\n", "")
    assert empty.status == OK and "all stores empty" in empty.summary
    broken = http.evaluate_bench(1, "", "clip: /app/data/clip-1.index does not match the size/sha256\n")
    assert broken.status == FAILURE
    missing = http.evaluate_bench(126, "OCI runtime exec failed: executable file not found in $PATH", "")
    assert missing.status == WARNING and "no `flashfit-server bench-store`" in missing.summary


# --- resources, disk -------------------------------------------------------------------------------


def _stats(usage, limit, cache=0, cpu=0, system=0, online=2):
    return {"memory_stats": {"usage": usage, "limit": limit, "stats": {"inactive_file": cache}},
            "cpu_stats": {"cpu_usage": {"total_usage": cpu}, "system_cpu_usage": system, "online_cpus": online}}


def test_memory_against_the_limit():
    parts, entry = resources.judge("b", _stats(970, 1000), None, 1000, None, 2)
    assert parts[0][0] == FAILURE and "97% of its limit" in parts[0][1]
    parts, entry = resources.judge("b", _stats(900, 1000, cache=20), None, 1000, None, 2)
    assert parts[0][0] == WARNING and entry["memory_bytes"] == 880
    parts, _ = resources.judge("b", _stats(100, 1000), None, 1000, None, 2)
    assert parts[0][0] == OK


def test_cpu_fraction_between_two_samples():
    first, second = _stats(0, 1, cpu=0, system=0), _stats(0, 1, cpu=500, system=1000, online=4)
    assert resources.cpu_fraction(first, second) == 2.0
    parts, entry = resources.judge("b", second, 2.0, 0, 2.0, 4)
    assert any(p[0] == WARNING and "2.00 of 2 CPUs" in p[1] for p in parts)
    assert resources.cpu_fraction({}, second) is None


def test_disk_thresholds(tmp_path: Path):
    assert disk.judge("volumes.data", "/d", {"total": 100, "free": 3, "used": 97})[0] == FAILURE
    assert disk.judge("volumes.data", "/d", {"total": 100, "free": 10, "used": 90})[0] == WARNING
    status, text, hint = disk.judge("volumes.data", "/d", {"total": 100, "free": 50, "used": 50})
    assert status == OK and "50% used" in text and hint is None
    assert disk.usage_of(tmp_path)["total"] > 0


def test_disk_check_reads_the_backend_mounts(tmp_path: Path):
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir(), models.mkdir()
    backend = container("b", mounts=[{"Destination": "/app/data", "Source": str(data)},
                                     {"Destination": "/app/models", "Source": str(models)}])
    ctx = ctx_with([backend], {})
    assert disk.locations(ctx) == {"volumes.data": str(data), "volumes.models": str(models)}
    assert disk.disk(ctx).details["volumes"]["volumes.data"]["path"] == str(data)


def test_disk_check_with_baked_models_needs_no_models_folder(tmp_path: Path):
    """server.build.models: baked: no host folder at volumes.models (none on a new node), and
    the check reports the digest the backend's image records instead of failing."""
    data = tmp_path / "data"
    data.mkdir()
    labels = {"io.flashfit.models": "baked", "io.flashfit.models-digest": "sha256:" + "ab" * 32}
    backend = container("b", mounts=[{"Destination": "/app/data", "Source": str(data)}])
    backend.attrs["Config"]["Labels"].update(labels)
    cfg = config(server={"build": {"models": "baked"}}, volumes={"models": "./absent-models", "data": str(data)})
    ctx = ctx_with([backend], {}, cfg=cfg, tmp_path=tmp_path)
    assert disk.locations(ctx) == {"volumes.data": str(data)}
    found = disk.disk(ctx)
    assert found.status == OK, found
    assert "volumes.models baked into the image (sha256:abababababab" in found.summary
    assert found.details["volumes"]["volumes.models"] == {"baked": True, "image_models": "baked", "digest": labels["io.flashfit.models-digest"]}
    # The same folder mounted and absent is a failure, as before.
    mounted = ctx_with([], {}, cfg=config(volumes={"models": "./absent-models", "data": str(data)}), tmp_path=tmp_path)
    assert disk.disk(mounted).status == FAILURE


# --- nginx -----------------------------------------------------------------------------------------

CONF = """
http {
    # upstream commented { server nope:1; }
    upstream backend_servers {
        least_conn;
        server demo-backend-blue-1-a:8080 max_fails=3 fail_timeout=30s;
        server 172.30.0.6:8080;
        keepalive 32;
    }
    upstream unused { server other:80; }
    server { listen 80; location / { proxy_pass http://backend_servers; } }
}
"""


def test_upstream_parsing():
    assert nginxconf.upstreams(CONF) == {"backend_servers": ["demo-backend-blue-1-a:8080", "172.30.0.6:8080"],
                                         "unused": ["other:80"]}
    assert list(nginxconf.proxied_upstreams(CONF)) == ["backend_servers"]
    assert nginxconf.split_address("[::1]:80") == ("::1", 80)
    assert nginxconf.split_address("host") == ("host", 80)
    assert nginxconf.config_args(["nginx", "-c", "/etc/flashfit/nginx.conf", "-g", "daemon off;"]) == [
        "-c", "/etc/flashfit/nginx.conf"]


def test_upstream_matches_running_backends_by_name_or_ip():
    b1 = container("demo-backend-blue-1-a", ip="172.30.0.5")
    b2 = container("demo-backend-blue-2-a", ip="172.30.0.6")
    servers = nginxconf.proxied_upstreams(CONF)
    assert nginx.evaluate_upstream(servers, [b1, b2], None).status == OK
    stopped = container("demo-backend-blue-2-a", ip="172.30.0.6", status="exited")
    found = nginx.evaluate_upstream(servers, [b1, stopped], None)
    assert found.status == FAILURE and "which is exited" in found.summary
    broken = nginx.evaluate_upstream({"backend_servers": ["nosuchhost:8080"]}, [b1], None)
    assert broken.status == FAILURE and "nosuchhost:8080 is not a backend" in broken.summary
    idle = nginx.evaluate_upstream({"backend_servers": ["demo-backend-blue-1-a:8080"]}, [b1, b2], None)
    assert idle.status == WARNING and "demo-backend-blue-2-a" in idle.summary
    drift = nginx.evaluate_upstream({"b": ["demo-backend-blue-1-a:8080"]}, [b1], ("demo-backend-green-1-b",))
    assert drift.status == WARNING and "last applied switch" in drift.summary


def test_upstream_slots_resolve_through_their_links():
    b1 = container("demo-backend-blue-1-a", ip="172.30.0.5")
    b2 = container("demo-backend-green-1-b", ip="172.30.0.7")
    servers = {"backend_servers": ["unix:/run/flashfit/slot-1.sock"]}
    slots = {"unix:/run/flashfit/slot-1.sock": "demo-backend-green-1-b"}
    found = nginx.evaluate_upstream(servers, [b2], ("demo-backend-green-1-b",), slots)
    assert found.status == OK and "slot-1 -> demo-backend-green-1-b" in found.summary
    stale = nginx.evaluate_upstream(servers, [b1], None, {"unix:/run/flashfit/slot-1.sock": "gone"})
    assert stale.status == FAILURE and "slot slot-1.sock points at gone" in stale.summary
    unlinked = nginx.evaluate_upstream(servers, [b1], None, {})
    assert unlinked.status == FAILURE and "is not linked to a backend" in unlinked.summary


def test_nginx_t_output():
    good = nginx.evaluate_test(0, "nginx: the configuration file /etc/flashfit/nginx.conf syntax is ok\n", "p")
    assert good.status == OK
    bad = nginx.evaluate_test(1, "nginx: [emerg] host not found in upstream \"nosuchhost:8080\" in /etc/flashfit/nginx.conf:25\n"
                                 "nginx: configuration file /etc/flashfit/nginx.conf test failed\n", "p")
    assert bad.status == FAILURE and bad.summary.startswith('nginx -t fails: host not found in upstream "nosuchhost:8080"')


def test_nginx_config_check_runs_nginx_t_with_the_running_config_file():
    proxy = container("demo-proxy", role="proxy", path="nginx", args=["-c", "/etc/flashfit/nginx.conf", "-g", "daemon off;"])
    calls = []
    said = b"nginx: configuration file /etc/flashfit/nginx.conf test is successful\n"

    def exec_in(container, argv):
        calls.append((container.name, argv))
        return ExecOutput(0, said, b"", said)

    ctx = ctx_with([proxy], {})
    ctx.exec = exec_in
    assert nginx.nginx_config(ctx).status == OK
    assert calls == [("demo-proxy", ["nginx", "-t", "-c", "/etc/flashfit/nginx.conf"])]


# --- tls -------------------------------------------------------------------------------------------


def make_cert(days: float, now: datetime = NOW) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=30))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_certificate_expiry_windows():
    cert, key = make_cert(90)
    assert tls.evaluate(cert, key, None, NOW).status == OK
    cert, key = make_cert(3)
    soon = tls.evaluate(cert, key, None, NOW)
    assert soon.status == WARNING and "expires in 2 days" in soon.summary or "expires in 3 days" in soon.summary
    cert, key = make_cert(-1)
    expired = tls.evaluate(cert, key, None, NOW)
    assert expired.status == FAILURE and "expired" in expired.summary
    other_cert, other_key = make_cert(90)
    mismatch = tls.evaluate(other_cert, key, None, NOW)
    assert mismatch.status == FAILURE and "does not belong" in mismatch.summary


def test_tls_check_reads_the_configured_files(tmp_path: Path):
    cert, key = make_cert(10)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    cfg = config(tls={"enabled": True, "domains": ["example.com"], "certificate": "server.crt", "key": "server.key"},
                 ports={"https": 1})
    cfg._base_dir = tmp_path
    found = tls.tls(DoctorContext(cfg, None, now=lambda: NOW))
    assert found.status == WARNING and "expires in" in found.summary
    assert tls.tls(DoctorContext(config(), None)).summary.startswith("TLS is not configured")


# --- lock, backup ----------------------------------------------------------------------------------


def test_lock_states(tmp_path: Path):
    from flashfit_ops.execute.lock import LockInfo, LockStatus

    assert lock.evaluate(LockStatus(False, None), "h").status == OK
    info = LockInfo(who="ci", host="h", pid=999999, since="2025-06-01T10:00:00+00:00", command="flashfit deploy")
    stale = lock.evaluate(LockStatus(False, info, stale=True), "h", alive=lambda pid: False)
    assert stale.status == WARNING and "pid 999999 is gone" in stale.summary and "lock release" in stale.hint
    held = lock.evaluate(LockStatus(True, info), "h")
    assert held.status == WARNING and "in progress" in held.summary


def test_lock_check_reads_a_record_left_by_a_dead_process(tmp_path: Path):
    state = tmp_path / ".flashfit"
    state.mkdir()
    (state / "lock").write_text(json.dumps({"who": "ci", "host": socket.gethostname(), "pid": 2 ** 22 + 12345,
                                            "since": "2025-06-01T10:00:00+00:00", "command": "flashfit deploy",
                                            "message": ""}))
    cfg = config()
    cfg._base_dir = tmp_path
    found = lock.lock(DoctorContext(cfg, None))
    assert found.status == WARNING and "stale deploy lock" in found.summary and found.details["pid_alive"] is False


def test_backup_age_against_the_retention_policy():
    day = backup.expected_interval(7, 4)
    assert day == timedelta(days=1) and backup.expected_interval(0, 4) == timedelta(weeks=1)
    assert backup.expected_interval(0, 0) is None
    assert backup.evaluate(NOW - timedelta(hours=5), 3, NOW, day, "t").status == OK
    assert backup.evaluate(NOW - timedelta(hours=40), 3, NOW, day, "t").status == WARNING
    late = backup.evaluate(NOW - timedelta(days=4), 3, NOW, day, "t")
    assert late.status == FAILURE and "4.0 days old" in late.summary
    assert backup.evaluate(None, 0, NOW, day, "t").status == WARNING
    assert backup.evaluate(NOW - timedelta(days=40), 1, NOW, None, "t").status == OK


def test_backup_check_lists_the_target(tmp_path: Path):
    from flashfit_ops.backup.manifest import Manifest, manifest_key, new_backup_id
    from flashfit_ops.backup.store import LocalStore

    cfg = config(backup={"target": "file://./backups"})
    cfg._base_dir = tmp_path
    ctx = DoctorContext(cfg, None, now=lambda: NOW)
    assert backup.backup(ctx).summary.startswith("no backup yet")
    when = NOW - timedelta(hours=2)
    backup_id = new_backup_id(when)
    store = LocalStore(tmp_path / "backups")
    store.check(create=True)
    store.put_bytes(manifest_key(backup_id), Manifest(id=backup_id, time=when, files=[]).to_json())
    found = backup.backup(ctx)
    assert found.status == OK and "2h old" in found.summary


# --- stores ----------------------------------------------------------------------------------------


def write_store(folder: Path, name: str, ntotal: int, dim: int = 4, count: int | None = None) -> None:
    import hashlib

    data = b"IxM2" + struct.pack("<iq", dim, ntotal) + b"\0" * 32
    index_file = f"{name}-0000000001.index"
    (folder / index_file).write_bytes(data)
    meta = {"format": 1, "name": name, "dim": dim, "kind": "flat", "count": ntotal if count is None else count,
            "generation": 1, "index_file": index_file, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / f"{name}.json").write_text(json.dumps(meta))


def test_stores_agree_and_disagree(tmp_path: Path):
    assert stores.inspect_folder(tmp_path).summary.startswith("no stores saved yet")
    (tmp_path / "items.json").write_text(json.dumps({"next_id": 3, "items": [{"id": 1}, {"id": 2}]}))
    for name in ("clip", "blip", "fashion"):
        write_store(tmp_path, name, 2)
    good = stores.inspect_folder(tmp_path)
    assert good.status == OK and "clip 2" in good.summary
    write_store(tmp_path, "blip", 2, count=5)
    bad = stores.inspect_folder(tmp_path)
    assert bad.status == FAILURE and "blip: the index holds 2 vectors but blip.json says 5" in bad.summary
    write_store(tmp_path, "blip", 2)
    (tmp_path / "fashion-0000000001.index").write_bytes(b"IxM2" + struct.pack("<iq", 4, 2) + b"\1" * 32)
    assert "sha256 differs" in stores.inspect_folder(tmp_path).summary
    write_store(tmp_path, "fashion", 3)
    orphan = stores.inspect_folder(tmp_path)
    assert orphan.status == WARNING and "fashion holds 3 vectors for 2 catalogue items" in orphan.summary


def test_store_header_matches_real_faiss(tmp_path: Path):
    import faiss
    import numpy as np

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.random.rand(7, 8).astype("float32"), np.arange(7, dtype="int64"))
    path = tmp_path / "x.index"
    path.write_bytes(faiss.serialize_index(index).tobytes())
    assert stores.index_header(path) == (8, 7)


def test_store_bench_treats_never_saved_stores_as_empty():
    err = "clip: store 'clip' does not exist in /app/data\nblip: store 'blip' does not exist in /app/data\n"
    found = http.evaluate_bench(1, "fashion: empty\n", err)
    assert found.status == OK and found.details["empty"] == ["fashion", "clip", "blip"]


def test_stores_check_reads_the_segmented_format_and_names_a_tampered_segment(tmp_path: Path) -> None:
    from flashfit_ops.doctor.checks.stores import inspect_folder
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    dims = {"clip": 8, "blip": 8, "fashion": 4}
    store = DataStore(tmp_path, compact_in_background=False)
    store.open(dims, background=False)
    store.add_items([NewItem(b"x", "png", {n: random_unit_vectors(1, d, s)[0] for n, d in dims.items()}, name="a", caption="")
                     for s in range(3)])
    good = inspect_folder(tmp_path)
    assert good.status == "ok" and "3 segments" in good.summary and "3 items" in good.summary
    segment = next((tmp_path / "segments").glob("blip-*.seg"))
    segment.write_bytes(segment.read_bytes()[:-1] + b"\x01")
    bad = inspect_folder(tmp_path)
    assert bad.status == "failure" and segment.name in bad.summary and "sha256" in bad.summary
