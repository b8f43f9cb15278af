"""Proxy helpers: upstream names read back from a rendered nginx.conf, leftover files, the
connection count used by the drain, and the switch sequence against a fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flashfit_ops.errors import OperationFailed
from flashfit_ops.execute.proxy import (
    APPLIED_FILE,
    CANDIDATE_FILE,
    ProxyController,
    _established_on,
    parse_upstreams,
    read_files,
)
from flashfit_ops.render import render_nginx
from tests.unit.ops.test_plan_strategies import make_config

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 020012AC:1F90 030012AC:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 020012AC:1F90 030012AC:C351 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 020012AC:1F90 030012AC:C352 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   4: 020012AC:C353 030012AC:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
"""


def test_parse_upstreams_of_a_rendered_config(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    text = render_nginx(config, ["shop-backend-blue-1-x:8080", "shop-backend-green-2-y:8080"])
    assert parse_upstreams(text) == ("shop-backend-blue-1-x", "shop-backend-green-2-y")
    assert parse_upstreams(render_nginx(config, ["a:8080"], tls=True)) == ("a",)
    assert parse_upstreams("garbage {") == ()


def test_established_counts_only_the_backend_port() -> None:
    assert _established_on(TCP, 8080) == 2  # listen, TIME_WAIT and outgoing connections do not count


def test_read_files_finds_leftovers(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("upstream backend_servers {\n server a:8080;\n}\n")
    (tmp_path / APPLIED_FILE).write_text(json.dumps({"upstreams": ["b"]}))
    (tmp_path / CANDIDATE_FILE).write_text("x")
    (tmp_path / ".nginx.conf.123.tmp").write_text("x")
    files = read_files(tmp_path)
    assert files.config == ("a",) and files.applied == ("b",)
    assert files.stray == (".nginx.conf.123.tmp", CANDIDATE_FILE)
    assert read_files(tmp_path / "missing").config_present is False


class FakeProxyBackend:
    def __init__(self, nginx_t_ok: bool = True):
        self.calls: list[list[str]] = []
        self.generation = [(101, "nginx: worker process"), (102, "nginx: worker process")]
        self.nginx_t_ok = nginx_t_ok

    def exec(self, name, command):
        self.calls.append(command)
        if command[:2] == ["nginx", "-t"]:
            return (0, "") if self.nginx_t_ok else (1, "host not found in upstream")
        if command[:3] == ["nginx", "-s", "reload"]:
            self.generation = [(101, "nginx: worker process is shutting down"), (201, "nginx: worker process")]
            return 0, ""
        return 0, ""

    def processes(self, name):
        return [(1, "nginx: master process nginx -g daemon off;"), *self.generation]


def controller(tmp_path: Path, backend) -> ProxyController:
    config = make_config(tmp_path)
    proxy = ProxyController(backend, config, sleep=lambda s: None)
    proxy.verify = lambda timeout=10.0: None  # no proxy to send a request through here
    return proxy


def test_switch_tests_renames_reloads_and_records(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend)
    proxy.switch(("shop-backend-green-1-x",))
    assert backend.calls[0] == ["nginx", "-t", "-q", "-c", "/etc/flashfit/nginx.conf.next"]
    assert backend.calls[1] == ["nginx", "-s", "reload", "-c", "/etc/flashfit/nginx.conf"]
    files = read_files(proxy.folder)
    assert files.config == files.applied == ("shop-backend-green-1-x",) and files.stray == ()
    assert proxy.retired_workers == {101, 102}


def test_a_rejected_config_changes_nothing(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend)
    proxy.switch(("a",))
    backend.nginx_t_ok = False
    with pytest.raises(OperationFailed) as caught:
        proxy.switch(("b",))
    assert "host not found" in caught.value.details["nginx"]
    files = read_files(proxy.folder)
    assert files.config == files.applied == ("a",) and files.stray == ()
    assert not any(c[:2] == ["nginx", "-s"] for c in backend.calls[2:])


def test_drain_waits_for_retired_workers_then_connections(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend)
    proxy.switch(("a",))
    counts = iter([3, 1, 0])
    proxy.connections = lambda name: next(counts)
    ticks = iter(range(100))
    proxy.clock = lambda: next(ticks) * 0.01
    polls = []
    original = backend.processes

    def processes(name):
        polls.append(1)
        if len(polls) > 2:
            backend.generation = [(201, "nginx: worker process")]
        return original(name)

    backend.processes = processes
    result = proxy.drain(("old",), timeout=30)
    assert result["drained"]
    assert len(polls) >= 3


def test_drain_gives_up_at_the_timeout(tmp_path: Path) -> None:
    proxy = controller(tmp_path, FakeProxyBackend())
    proxy.connections = lambda name: 1
    ticks = iter(range(1000))
    proxy.clock = lambda: next(ticks) * 0.5
    result = proxy.drain(("old",), timeout=2)
    assert not result["drained"] and "old: 1 connection(s)" in result["waiting_for"][0]
