"""The proxy's slots: the rendered upstream, slot links read back, leftover files, and the switch
sequence against a fake backend (a rename of a link; nginx is tested and reloaded only when the
slot count changes)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from flashfit_ops.errors import OperationFailed
from flashfit_ops.execute.proxy import ProxyController, short_folder
from flashfit_ops.proxy_files import (
    APPLIED_FILE,
    CANDIDATE_FILE,
    parse_slot_count,
    parse_upstreams,
    read_files,
    slot_links,
    slot_target,
)
from flashfit_ops.render import render_nginx
from tests.unit.ops.test_plan_strategies import make_config


def test_slot_config_lists_slots_without_upstream_keepalive(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    proxy = ProxyController(None, config)
    text = proxy.render(3)
    assert "server unix:/run/flashfit/slot-1.sock max_fails" in text
    assert "server unix:/run/flashfit/slot-3.sock max_fails" in text
    assert parse_slot_count(text) == 3 and parse_upstreams(text) == ()
    assert "keepalive 32" not in text
    # the TCP form (compose) keeps its upstream keep-alive; an nginx.conf older than slots is read
    legacy = render_nginx(config, ["shop-backend-blue-1-x:8080", "shop-backend-green-2-y:8080"])
    assert "keepalive 32" in legacy and parse_slot_count(legacy) == 0
    assert parse_upstreams(legacy) == ("shop-backend-blue-1-x", "shop-backend-green-2-y")
    assert parse_slot_count("garbage {") == 0


def test_read_files_follows_slot_links_and_finds_leftovers(tmp_path: Path) -> None:
    folder, sockets = tmp_path / "proxy", tmp_path / "sockets"
    folder.mkdir()
    sockets.mkdir()
    config = make_config(tmp_path)
    (folder / "nginx.conf").write_text(ProxyController(None, config).render(2))
    os.symlink("a.sock", sockets / "slot-1.sock")
    (folder / APPLIED_FILE).write_text(json.dumps({"slots": ["b", "c"]}))
    (folder / CANDIDATE_FILE).write_text("x")
    (folder / ".nginx.conf.123.tmp").write_text("x")
    os.symlink("b.sock", sockets / "slot-2.sock.tmp")
    files = read_files(folder)
    assert files.config == ("a", "")  # slot 2 has no link
    assert files.applied == ("b", "c")
    assert files.stray == (".nginx.conf.123.tmp", CANDIDATE_FILE, "slot-2.sock.tmp")
    assert slot_target(sockets, 1) == "a" and slot_target(sockets, 2) is None
    assert slot_links(sockets) == {1: "a"}
    assert read_files(tmp_path / "missing").config_present is False
    # an applied.json written before slots existed
    (folder / APPLIED_FILE).write_text(json.dumps({"upstreams": ["old"]}))
    assert read_files(folder).applied == ("old",)


def test_short_folder_names_a_long_folder_through_proc(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    with short_folder(deep) as name:
        assert name.startswith("/proc/self/fd/") and os.path.samefile(name, deep)
    with short_folder(Path("/tmp")) as name:
        assert name == "/tmp"


class FakeProxyBackend:
    def __init__(self, nginx_t_ok: bool = True):
        self.calls: list[list[str]] = []
        self.generation = [(101, "nginx: worker process"), (102, "nginx: worker process")]
        self.nginx_t_ok = nginx_t_ok

    def exec(self, name, command):
        self.calls.append(command)
        if command[:2] == ["nginx", "-t"]:
            return (0, "") if self.nginx_t_ok else (1, "unknown directive")
        if command[:3] == ["nginx", "-s", "reload"]:
            old = self.generation[-1][0]
            self.generation = [(old, "nginx: worker process is shutting down"), (old + 100, "nginx: worker process")]
            return 0, ""
        return 0, ""

    def processes(self, name):
        return [(1, "nginx: master process nginx -g daemon off;"), *self.generation]


def controller(tmp_path: Path, backend, *names: str) -> ProxyController:
    config = make_config(tmp_path)
    proxy = ProxyController(backend, config, sleep=lambda s: None)
    proxy.verified = []
    proxy.verify = lambda slots, versions, timeout=10.0: proxy.verified.append((tuple(slots), dict(versions)))
    proxy.ensure_folders()
    for name in names:  # what each container's server creates when it starts
        os.mknod(proxy.sockets / f"{name}.sock", 0o666 | stat.S_IFSOCK)
    return proxy


def test_first_switch_renders_tests_and_reloads_then_links_are_renamed_without_reload(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend, "blue", "green")
    assert stat.S_IMODE(proxy.sockets.stat().st_mode) == 0o777
    proxy.switch(("blue",), {"blue": "v1"})
    assert backend.calls == [
        ["nginx", "-t", "-q", "-c", "/etc/flashfit/nginx.conf.next"],
        ["nginx", "-s", "reload", "-c", "/etc/flashfit/nginx.conf"],
    ]
    assert os.readlink(proxy.sockets / "slot-1.sock") == "blue.sock"  # relative: same in every container
    backend.calls.clear()
    proxy.switch(("green",), {"green": "v2"})
    assert backend.calls == []  # no nginx -t, no reload: one rename
    files = read_files(proxy.folder)
    assert files.config == files.applied == ("green",) and files.stray == ()
    assert proxy.verified[-1] == (("green",), {"green": "v2"})
    assert proxy.reloads == 1
    proxy.switch(("green",), force_reload=True)  # a restore: same slots, nginx reloaded anyway
    assert backend.calls[-1] == ["nginx", "-s", "reload", "-c", "/etc/flashfit/nginx.conf"] and proxy.reloads == 2
    assert json.loads((proxy.folder / APPLIED_FILE).read_text())["served"] == ["blue", "green"]


def test_the_config_a_switch_left_is_known_unchanged_until_edited(tmp_path: Path) -> None:
    proxy = controller(tmp_path, FakeProxyBackend(), "blue")
    assert read_files(proxy.folder).config_unchanged is False  # nothing applied yet
    proxy.switch(("blue",), {"blue": "v1"})
    assert read_files(proxy.folder).config_unchanged is True  # observe skips `nginx -t`
    config = proxy.folder / "nginx.conf"
    config.write_text(config.read_text() + "# edited by hand\n")
    assert read_files(proxy.folder).config_unchanged is False  # observe tests it again


def test_replica_counts_within_the_fixed_slots_are_relinks_only(tmp_path: Path) -> None:
    """deploy.max_replicas (8 by default) slots cycle over the containers: 1 -> 3 -> 1 replicas
    relink them, without `nginx -t` or a reload; only the first switch writes nginx.conf."""
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend, "a", "b", "c")
    proxy.switch(("a",))
    assert proxy.reloads == 1
    backend.calls.clear()
    proxy.switch(("a", "b", "c"))
    assert parse_slot_count((proxy.folder / "nginx.conf").read_text()) == 8
    assert slot_links(proxy.sockets) == {1: "a", 2: "b", 3: "c", 4: "a", 5: "b", 6: "c", 7: "a", 8: "b"}
    assert read_files(proxy.folder).config == ("a", "b", "c")
    proxy.switch(("c",))
    assert slot_links(proxy.sockets) == {n: "c" for n in range(1, 9)}
    assert backend.calls == [] and proxy.reloads == 1
    assert read_files(proxy.folder).config == ("c",)


def test_more_replicas_than_slots_reload_once_and_keep_their_slots(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    names = [f"r{i}" for i in range(1, 11)]
    proxy = controller(tmp_path, backend, *names)
    proxy.switch(("r1",))
    proxy.switch(tuple(names))  # 10 replicas: past the 8 slots, nginx.conf must list 10
    assert proxy.reloads == 2 and parse_slot_count((proxy.folder / "nginx.conf").read_text()) == 10
    proxy.switch(("r1", "r2"))  # back to 2: the 10 slots hold them, no reload
    assert proxy.reloads == 2 and slot_links(proxy.sockets)[10] == "r2"


def test_standby_slots_point_at_the_previous_version_until_released(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend, "blue", "green")
    proxy.switch(("blue",))
    text = (proxy.folder / "nginx.conf").read_text()
    assert "server unix:/run/flashfit/slot-standby-8.sock max_fails=0 backup;" in text
    # a request may try every slot and standby slot; a recommend (read-only POST) that failed
    # mid-request on a dying backend is passed on too; the compose upstream keeps its 3 tries
    assert "proxy_next_upstream_tries 16;" in text
    recommend = text[text.index("location = /api/fusion/recommend {") :]
    assert "http_504 non_idempotent;" in recommend[: recommend.index("}")]
    compose = render_nginx(proxy.config, ["backend:8080"])
    assert "proxy_next_upstream_tries 3;" in compose and "non_idempotent" not in compose and "backup" not in compose
    assert os.readlink(proxy.sockets / "slot-standby-1.sock") == "blue.sock"  # no standby given: the live ones
    proxy.switch(("green",), standby=("blue",))
    assert {slot_target(proxy.sockets, n, f"slot-standby-{n}.sock") for n in range(1, 9)} == {"blue"}
    assert set(slot_links(proxy.sockets).values()) == {"green"}
    assert json.loads((proxy.folder / APPLIED_FILE).read_text())["standby"] == ["blue"]
    proxy.link_standby(("green",), 8)
    assert {slot_target(proxy.sockets, n, f"slot-standby-{n}.sock") for n in range(1, 9)} == {"green"}
    assert proxy.reloads == 1


def test_a_container_without_a_socket_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend, "a")
    proxy.switch(("a",))
    with pytest.raises(OperationFailed) as caught:
        proxy.switch(("old-image",))
    assert "FLASHFIT_SOCKET" in caught.value.hint
    assert read_files(proxy.folder).config == ("a",)


def test_a_rejected_config_changes_nothing(tmp_path: Path) -> None:
    backend = FakeProxyBackend()
    proxy = controller(tmp_path, backend, "a", "b")
    proxy.switch(("a",))
    backend.nginx_t_ok = False
    proxy.config = proxy.config.model_copy(update={"rate_limit": proxy.config.rate_limit.model_copy(update={"burst": 99})})
    with pytest.raises(OperationFailed) as caught:
        proxy.switch(("a", "b"))  # the new settings need a reload, which nginx -t refuses
    assert "unknown directive" in caught.value.details["nginx"]
    files = read_files(proxy.folder)
    assert files.config == files.applied == ("a",) and files.stray == ()
    assert slot_links(proxy.sockets) == {n: "a" for n in range(1, 9)}
    assert not any(c[:2] == ["nginx", "-s"] for c in backend.calls[2:])


def test_clean_removes_leftovers_in_both_folders(tmp_path: Path) -> None:
    proxy = controller(tmp_path, FakeProxyBackend())
    (proxy.folder / CANDIDATE_FILE).write_text("x")
    os.symlink("b.sock", proxy.sockets / "slot-1.sock.tmp")
    proxy.clean(read_files(proxy.folder).stray)
    assert read_files(proxy.folder).stray == ()
