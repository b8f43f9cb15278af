"""The keeper (issue 11, self-healing): its step as data, and its two decisions, made on real
files: is the deploy lock held (a real flock), which containers do the slots link to."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

from flashfit_ops.execute import keeper_main
from flashfit_ops.plan.keeper import engine_socket, keeper_step
from flashfit_ops.plan.lifecycle import plan_down, plan_stop
from flashfit_ops.plan.steps import EnsureKeeper, RemoveContainer, StopContainer
from tests.unit.ops.test_plan_strategies import backend, make_config, observed


def test_keeper_step_runs_from_the_given_image_on_a_local_engine(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert keeper_step(config, "flashfit/backend:v1", None) == [
        EnsureKeeper(
            name="shop-keeper",
            image="flashfit/backend:v1",
            proxy="shop-proxy",
            state_dir=str(tmp_path / ".flashfit"),
            engine_socket="/var/run/docker.sock",
            labels={"io.flashfit.project": "shop", "io.flashfit.role": "keeper"},
        )
    ]
    assert keeper_step(config, "x:1", "unix:///run/user/1000/docker.sock")[0].engine_socket == "/run/user/1000/docker.sock"
    assert keeper_step(config, "x:1", "tcp://10.0.0.2:2376") == [] and engine_socket("ssh://host") is None
    assert keeper_step(config, None, None) == []


def test_stop_and_down_take_the_keeper_away_first(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a = backend("blue", 1)
    state = dataclasses.replace(observed([a], live=[a]), keeper_state="running")
    assert plan_stop(config, state)[0] == StopContainer("shop-keeper")
    assert plan_down(config, state, volumes=False)[0] == RemoveContainer("shop-keeper", reason="down")


def test_keeper_sees_the_deploy_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(keeper_main, "STATE", str(tmp_path))
    assert keeper_main.lock_held() is False  # no lock file: free
    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    try:
        assert keeper_main.lock_held() is False  # a file nobody holds (a killed deploy's): free
        holder = os.open(tmp_path / "lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            assert keeper_main.lock_held() is True
        finally:
            os.close(holder)
    finally:
        os.close(fd)


def test_keeper_reads_what_the_slots_link_to(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(keeper_main, "STATE", str(tmp_path))
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    os.symlink("shop-backend-blue-1-x.sock", sockets / "slot-1.sock")
    os.symlink("shop-backend-blue-2-x.sock", sockets / "slot-2.sock")
    os.symlink("shop-backend-green-1-y.sock", sockets / "slot-3.sock.tmp")  # half-made: not a slot
    (sockets / "shop-backend-blue-1-x.sock").write_text("")
    assert keeper_main.routed() == {"shop-backend-blue-1-x", "shop-backend-blue-2-x"}


def test_the_keeper_script_finds_containers_by_the_project_label() -> None:
    """The keeper runs alone in its container and cannot import flashfit_ops.labels: its own
    spelling of the label must stay the one every container carries."""
    from flashfit_ops.execute.lifecycle import KEEPER_SCRIPT
    from flashfit_ops.labels import LABEL_PROJECT

    assert f'f"{LABEL_PROJECT}={{PROJECT}}"' in KEEPER_SCRIPT.read_text(encoding="utf-8")
