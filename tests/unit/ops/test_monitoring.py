"""Monitoring logic without services: the targets file that follows switches, the specs of the
monitoring containers and their digests, the files they read, Prometheus's API as read through a
mock transport, and the doctor's verdict."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import yaml

from flashfit_ops.config import resolve
from flashfit_ops.doctor.checks.monitoring import evaluate
from flashfit_ops.doctor.result import FAILURE, OK, WARNING
from flashfit_ops.monitoring import stack, targets
from flashfit_ops.monitoring.api import MonitoringView, read_view
from flashfit_ops.monitoring.runner import webhook_url, write_files

B1, B2 = "shop-backend-blue-1-d1", "shop-backend-blue-2-d1"
G1, G2 = "shop-backend-green-1-d2", "shop-backend-green-2-d2"


def config(tmp_path: Path, enabled: bool = True, **extra):
    # Port 1: nothing listens there, so waits on Prometheus end at once.
    data = {"project": "shop", "monitoring": {"enabled": enabled}, "ports": {"prometheus": 1}, **extra}
    return resolve(data, environ={}, base_dir=tmp_path)


def containers_in_file(cfg) -> list[str]:
    return [g["labels"]["container"] for g in json.loads(targets.targets_path(cfg).read_text())]


def test_targets_document_names_each_live_container_on_the_project_network(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert targets.targets_document(cfg, (B1, B2), draining=(G1,)) == [
        {"targets": [f"{B1}:8080"], "labels": {"project": "shop", "container": B1, "color": "blue"}},
        {"targets": [f"{B2}:8080"], "labels": {"project": "shop", "container": B2, "color": "blue"}},
        {"targets": [f"{G1}:8080"], "labels": {"project": "shop", "container": G1, "color": "green"}},
    ]


def groups_in_file(cfg) -> dict[str, dict]:
    return {g["labels"]["container"]: g for g in json.loads(targets.targets_path(cfg).read_text())}


def test_a_replica_keeps_its_target_labels_while_listed(tmp_path: Path) -> None:
    """Prometheus names a target by its labels: a label changed at a switch (the slot a replica
    had, then none while it drains) made a new target whose first scrape came after the old
    one's series went stale, so `sum(up == 1)` dipped below the replica count mid-deploy."""
    cfg = config(tmp_path)
    proxy = tmp_path / ".flashfit" / "proxy"
    proxy.mkdir(parents=True)
    seen: dict[str, dict] = {}

    def check() -> None:
        for name, group in groups_in_file(cfg).items():
            assert seen.setdefault(name, group) == group, name

    targets.on_switch(cfg, (B1, B2))
    check()
    targets.on_switch(cfg, (G1, G2))  # blue-green: blue drains
    check()
    (proxy / "applied.json").write_text(json.dumps({"slots": [G1, G2]}))
    targets.settle(cfg)
    check()
    # Rolling, and a replica count change: a live replica moves to another slot.
    targets.on_switch(cfg, (B1, G2))
    check()
    targets.on_switch(cfg, (G2,))
    check()
    (proxy / "applied.json").write_text(json.dumps({"slots": [G2]}))
    targets.settle(cfg)
    check()
    assert list(groups_in_file(cfg)) == [G2]


def _view(up: bool = True, refused: bool = False, **health: str) -> MonitoringView:
    view = MonitoringView(url="u", up=up, error="" if up else "ReadTimeout on u", targets=dict(health))
    view.refused = refused
    return view


def test_a_switch_waits_until_prometheus_has_scraped_the_new_replicas(tmp_path: Path, monkeypatch) -> None:
    from flashfit_ops.monitoring import api

    cfg = config(tmp_path)
    views = iter([_view(**{B1: "up"}), _view(**{B1: "up", G1: "unknown"}), _view(**{B1: "up", G1: "up", G2: "up"})])
    monkeypatch.setattr(api, "read_view", lambda config, timeout=3.0: next(views))
    sleeps: list[float] = []
    assert targets.wait_scraped(cfg, (G1, G2, G1), sleep=sleeps.append)
    assert sleeps == [0.25, 0.25]


def test_a_slow_prometheus_answer_does_not_end_the_wait(tmp_path: Path, monkeypatch) -> None:
    """On a loaded host one poll timed out, the wait ended at once and the old replicas drained
    before the new ones were scraped."""
    from flashfit_ops.monitoring import api

    cfg = config(tmp_path)
    views = iter([_view(up=False), _view(**{G1: "up"}), _view(up=False), _view(**{G1: "up", G2: "up"})])
    monkeypatch.setattr(api, "read_view", lambda config, timeout=3.0: next(views))
    assert targets.wait_scraped(cfg, (G1, G2), sleep=lambda s: None)


def test_the_wait_ends_at_once_without_prometheus_and_at_its_limit_without_scrapes(tmp_path: Path, capsys) -> None:
    cfg = config(tmp_path, monitoring={"enabled": True, "scrape_interval": "1s"})
    sleeps: list[float] = []
    assert not targets.wait_scraped(cfg, (G1,), read=lambda: _view(up=False, refused=True), sleep=sleeps.append)
    assert sleeps == []  # nothing listens: no Prometheus to wait for
    assert not targets.wait_scraped(cfg, (G1,))  # the real read: port 1 refuses
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert targets.scrape_wait_limit(1.0) == 24.0 and targets.scrape_wait_limit(15.0) == 80.0
    assert not targets.wait_scraped(cfg, (G1, G2), read=lambda: _view(**{G1: "up", G2: "down"}), sleep=sleep, clock=lambda: now[0])
    assert now[0] == 24.0
    assert G2 in capsys.readouterr().err


def test_a_switch_adds_the_new_replicas_and_settle_drops_the_drained_ones(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    targets.on_switch(cfg, (B1, B2))
    assert containers_in_file(cfg) == [B1, B2]
    targets.on_switch(cfg, (G1, G2))  # blue drains: still scraped
    assert containers_in_file(cfg) == [G1, G2, B1, B2]
    proxy = tmp_path / ".flashfit" / "proxy"
    proxy.mkdir(parents=True)
    (proxy / "applied.json").write_text(json.dumps({"slots": [G1, G2]}))
    targets.settle(cfg)
    assert containers_in_file(cfg) == [G1, G2]
    assert [p.name for p in targets.targets_path(cfg).parent.iterdir()] == ["backend.json"]  # no temp file left


def test_no_targets_file_when_monitoring_is_off(tmp_path: Path) -> None:
    cfg = config(tmp_path, enabled=False)
    targets.on_switch(cfg, (B1,))
    targets.settle(cfg)
    assert not (tmp_path / ".flashfit" / "monitoring").exists()


def test_spec_digest_changes_only_with_the_spec_or_a_secret(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    specs = {s.service: s for s in stack.monitor_specs(cfg, "/m")}
    assert list(specs) == ["prometheus", "alertmanager", "grafana"]
    prometheus = specs["prometheus"]
    assert prometheus.name == "shop-prometheus" and prometheus.ports == ((9090, 1),)
    assert prometheus.digest() == stack.monitor_specs(cfg, "/m")[0].digest()  # deterministic
    assert stack.prometheus_spec(config(tmp_path, services={"prometheus": {"image": "other:1"}}), "/m").digest() != prometheus.digest()
    assert stack.prometheus_spec(config(tmp_path, ports={"prometheus": 9999}), "/m").digest() != prometheus.digest()
    # A config file's content is not in the digest: a changed file is reloaded, not recreated.
    assert stack.prometheus_spec(config(tmp_path, monitoring={"enabled": True, "scrape_interval": "5s"}), "/m").digest() == prometheus.digest()
    grafana = specs["grafana"]
    secret = "pw-Zq81x"
    assert grafana.digest({"GF_SECURITY_ADMIN_PASSWORD": secret}) != grafana.digest({"GF_SECURITY_ADMIN_PASSWORD": "other"})
    assert secret not in json.dumps(grafana.labels(cfg, grafana.digest({"GF_SECURITY_ADMIN_PASSWORD": secret})))


def test_monitoring_files_use_file_discovery_and_keep_the_webhook_private(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / ".env").write_text("ALERT_WEBHOOK_URL=https://hooks.example/T0/secret\n")
    url = webhook_url(cfg, environ={})
    assert url == "https://hooks.example/T0/secret"
    assert write_files(cfg, url) == {"prometheus", "alertmanager", "grafana"}
    assert write_files(cfg, url) == set()  # unchanged: nothing to reload
    base = tmp_path / ".flashfit" / "monitoring"
    prometheus = yaml.safe_load((base / "prometheus/prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["file_sd_configs"] == [{"files": ["/etc/flashfit/prometheus/targets/backend.json"], "refresh_interval": "30s"}]
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["shop-alertmanager:9093"]
    alertmanager = base / "alertmanager/alertmanager.yml"
    assert stat.S_IMODE(alertmanager.stat().st_mode) == 0o600
    receivers = yaml.safe_load(alertmanager.read_text())["receivers"]
    assert receivers == [{"name": "webhook", "webhook_configs": [{"url": url, "send_resolved": True}]}]
    assert write_files(cfg, None) == {"alertmanager"}
    assert yaml.safe_load(alertmanager.read_text())["receivers"] == [{"name": "none"}]
    datasource = yaml.safe_load((base / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://shop-prometheus:9090"


def _prometheus(targets_: list[dict], alerts: list[dict], ready: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/-/ready":
            return httpx.Response(ready, text="ready")
        if request.url.path == "/api/v1/targets":
            return httpx.Response(200, json={"status": "success", "data": {"activeTargets": targets_}})
        if request.url.path == "/api/v1/alerts":
            return httpx.Response(200, json={"status": "success", "data": {"alerts": alerts}})
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def test_read_view_reports_backend_targets_and_firing_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    transport = _prometheus(
        [
            {"labels": {"job": "flashfit-backend", "container": B1}, "health": "up", "lastError": ""},
            {"labels": {"job": "flashfit-backend", "container": B2}, "health": "down", "lastError": "connection refused"},
            {"labels": {"job": "prometheus", "instance": "localhost:9090"}, "health": "up"},
        ],
        [
            {"labels": {"alertname": "HighErrorRate", "severity": "critical"}, "annotations": {"summary": "5xx"}, "state": "firing", "activeAt": "t"},
            {"labels": {"alertname": "SlowResponses"}, "state": "pending"},
        ],
    )
    view = read_view(cfg, transport=transport)
    assert view.up and view.targets == {B1: "up", B2: "down"}
    assert view.target_errors == {B2: "connection refused"}
    assert view.firing == [{"name": "HighErrorRate", "severity": "critical", "summary": "5xx", "since": "t"}]
    assert not read_view(cfg, transport=_prometheus([], [], ready=503)).up


def test_read_view_tells_a_refused_connection_from_a_slow_answer(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    refused = read_view(cfg)  # port 1: nothing listens
    assert not refused.up and refused.refused and refused.error.startswith("ConnectError")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    timed_out = read_view(cfg, transport=httpx.MockTransport(slow))
    assert not timed_out.up and not timed_out.refused and timed_out.error.startswith("ReadTimeout")


def test_doctor_verdicts() -> None:
    up = MonitoringView(url="http://127.0.0.1:9090", up=True, targets={B1: "up", B2: "up"})
    assert evaluate(up, [B1, B2], "shop", None).status == OK
    down = evaluate(MonitoringView(url="http://127.0.0.1:9090", up=False, error="ConnectError"), [B1], "shop", None)
    assert down.status == FAILURE and "does not answer" in down.summary and "shop-prometheus" in down.hint
    missing = evaluate(MonitoringView(url="u", up=True, targets={B1: "up"}), [B1, B2], "shop", None)
    assert missing.status == FAILURE and f"{B2} is not a scrape target" in missing.summary
    firing = MonitoringView(url="u", up=True, targets={B1: "up"}, firing=[{"name": "HighErrorRate", "severity": "critical", "summary": "x", "since": ""}])
    finding = evaluate(firing, [B1], "shop", "http://127.0.0.1:9093")
    assert finding.status == WARNING and "HighErrorRate firing" in finding.summary and "9093" in finding.hint


def test_alertmanager_port_may_not_collide_when_monitoring_runs(tmp_path: Path) -> None:
    import pytest

    from flashfit_ops.errors import ConfigError

    clash = {"ports": {"prometheus": 9090, "alertmanager": 9090}}
    resolve(clash, environ={}, base_dir=tmp_path)  # monitoring off: Alertmanager publishes nothing
    with pytest.raises(ConfigError) as info:
        resolve({**clash, "monitoring": {"enabled": True}}, environ={}, base_dir=tmp_path)
    assert "ports.alertmanager" in str(info.value.details)


def test_grafana_is_used_only_when_its_image_is_here_and_says_so_plainly(tmp_path: Path) -> None:
    from docker.errors import ImageNotFound

    from flashfit_ops.monitoring.runner import _ensure_image

    class Images:
        def __init__(self, present: set[str]):
            self.present = present
            self.pulled: list[str] = []

        def get(self, reference: str):
            if reference not in self.present:
                raise ImageNotFound(reference)
            return object()

        def pull(self, *args, **kwargs):  # a registry must not be tried for Grafana
            self.pulled.append(args[0])
            raise AssertionError("pulled")

    class Client:
        def __init__(self, present: set[str]):
            self.images = Images(present)

    cfg = config(tmp_path)
    grafana = stack.grafana_spec(cfg, "/m")
    missing = _ensure_image(Client(set()), cfg, grafana)
    assert missing is not None and "Grafana is not packaged by Debian" in missing and "grafana/grafana:latest" in missing
    assert _ensure_image(Client({"grafana/grafana:latest"}), cfg, grafana) is None


def test_the_proxy_switch_itself_moves_the_scrape_targets(tmp_path: Path) -> None:
    """The hook where a switch completes: targets follow the slots, a refused switch moves nothing."""
    import os

    import pytest

    from flashfit_ops.errors import OperationFailed
    from flashfit_ops.execute.proxy import ProxyController
    from tests.unit.ops.test_execute_proxy import FakeProxyBackend
    from tests.unit.ops.test_plan_strategies import make_config

    cfg = make_config(tmp_path, **{"monitoring.enabled": True, "ports.prometheus": 1})
    backend = FakeProxyBackend()
    proxy = ProxyController(backend, cfg, sleep=lambda s: None)
    proxy.verify = lambda slots, versions, timeout=10.0: None
    proxy.ensure_folders()
    for name in (B1, B2, G1, G2, "shop-backend-blue-3-d3"):
        os.mknod(proxy.sockets / f"{name}.sock", 0o666 | stat.S_IFSOCK)
    proxy.switch((B1, B2))
    assert containers_in_file(cfg) == [B1, B2]
    proxy.switch((G1, G2))
    assert containers_in_file(cfg) == [G1, G2, B1, B2]  # blue drains next
    targets.settle(cfg)
    assert containers_in_file(cfg) == [G1, G2]
    backend.nginx_t_ok = False
    with pytest.raises(OperationFailed):
        proxy.switch((G1, G2, "shop-backend-blue-3-d3"), force_reload=True)  # a reload needs nginx -t: refused
    assert containers_in_file(cfg) == [G1, G2]


def test_ensure_keeps_reloads_or_recreates_by_spec_digest(tmp_path: Path, monkeypatch) -> None:
    """Long-lived containers: kept when the digest matches, SIGHUP when only a file changed,
    recreated when the spec changed (fake engine at the seam; the real one is in the integration test)."""
    from docker.errors import NotFound

    from flashfit_ops.monitoring import runner

    cfg = config(tmp_path, services={"grafana": {"enabled": False}})
    monkeypatch.setattr(runner, "_ensure_image", lambda client, config, spec: None)
    monkeypatch.setattr(runner, "_wait_ready", lambda spec: None)
    created: list[str] = []
    monkeypatch.setattr(runner, "_create", lambda client, config, spec, digest, secrets: created.append(spec.name))

    class Container:
        def __init__(self, name: str, digest: str):
            self.name, self.status, self.labels, self.signals, self.removed = name, "running", {stack.LABEL_SPEC: digest}, [], False

        def kill(self, signal: str) -> None:
            self.signals.append(signal)

        def remove(self, force: bool) -> None:
            self.removed = True

    class Engine:
        def __init__(self, containers: dict):
            self.containers = self  # the deploy operations and the SDK client in one fake
            self.by_name = containers

        def get(self, name: str):
            if name not in self.by_name:
                raise NotFound(name)
            return self.by_name[name]

        def ensure_network(self, name, labels) -> bool:
            return False

        def ensure_volume(self, name, labels) -> bool:
            return False

    specs = {s.service: s for s in stack.monitor_specs(cfg, str(targets.monitoring_dir(cfg)))}
    empty = Engine({})
    first = runner.ensure(cfg, empty, empty)
    assert created == ["shop-prometheus", "shop-alertmanager"] and first["prometheus"]["action"] == "started"

    prometheus = Container("shop-prometheus", specs["prometheus"].digest())
    alertmanager = Container("shop-alertmanager", "an-older-spec")
    created.clear()
    engine = Engine({"shop-prometheus": prometheus, "shop-alertmanager": alertmanager})
    again = runner.ensure(cfg, engine, engine)
    assert again["prometheus"]["action"] == "kept" and prometheus.signals == [] and not prometheus.removed
    assert again["alertmanager"]["action"] == "started" and alertmanager.removed and created == ["shop-alertmanager"]

    faster = config(tmp_path, services={"grafana": {"enabled": False}}, monitoring={"enabled": True, "scrape_interval": "5s"})
    engine = Engine({"shop-prometheus": prometheus, "shop-alertmanager": Container("shop-alertmanager", specs["alertmanager"].digest())})
    reloaded = runner.ensure(faster, engine, engine)
    assert reloaded["prometheus"]["action"] == "reloaded" and prometheus.signals == ["SIGHUP"]
    assert reloaded["alertmanager"]["action"] == "kept"
