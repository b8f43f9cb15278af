"""After the keeper fails a dead backend over to a warm spare, Prometheus's scrape targets file
names the spare, not the dead one: the keeper's pass on real slot links and real files, with the
engine (container states, starts) and the spare's readiness faked at their seams."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashfit_ops.execute import keeper_main
from flashfit_ops.execute.lifecycle import KEEPER_MODULES, KEEPER_SCRIPT
from flashfit_ops.monitoring import filesd, targets
from flashfit_ops.plan.common import BACKEND_PORT, state_dir
from flashfit_ops.plan.keeper import KEEPER_TARGETS_DIR, TARGETS_FILE, keeper_step
from tests.unit.ops.test_plan_strategies import make_config

LIVE, SPARE = "shop-backend-blue-1-d1", "shop-backend-blue-2-d1"


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch):
    """What a deploy with one live backend, one spare and monitoring on leaves, and a keeper
    looking at it: (config, the engine's container states, the starts the keeper asked for)."""
    config = make_config(tmp_path, **{"monitoring.enabled": True, "deploy.spare_replicas": 1})
    state = state_dir(config)
    (state / "sockets").mkdir(parents=True)
    (state / "proxy").mkdir()
    os.symlink(f"{LIVE}.sock", state / "sockets" / "slot-1.sock")
    os.symlink(f"{SPARE}.sock", state / "sockets" / "slot-standby-1.sock")
    (state / "proxy" / "applied.json").write_text(json.dumps({"slots": [LIVE], "standby": [SPARE], "served": [LIVE]}))
    targets.write_targets(config, (LIVE,))  # what the deploy's switch wrote
    states = {LIVE: "running", SPARE: "running"}
    started: list[str] = []

    def engine(method: str, path: str) -> tuple[int, bytes]:
        started.append(path.split("/")[2])
        return 204, b""

    monkeypatch.setattr(keeper_main, "STATE", str(state))
    monkeypatch.setattr(keeper_main, "PROJECT", "shop")
    monkeypatch.setattr(keeper_main, "PROXY", "shop-proxy")
    monkeypatch.setattr(keeper_main, "TARGETS", str(targets.targets_path(config)))
    monkeypatch.setattr(keeper_main, "_targets_error", "")
    monkeypatch.setattr(keeper_main, "states", lambda: dict(states))
    monkeypatch.setattr(keeper_main, "engine", engine)
    monkeypatch.setattr(keeper_main, "ready", lambda name: name == SPARE)
    return config, states, started


def test_after_a_failover_the_targets_name_the_spare_and_not_the_dead_backend(deployed, monkeypatch) -> None:
    config, states, started = deployed
    states[LIVE] = "exited"  # killed
    keeper_main.heal({LIVE})
    assert keeper_main.links()[0] == {"slot-1.sock": SPARE}  # traffic first
    assert targets.read_targets(config) == [SPARE]
    # The document flashfit itself writes for that slot: the same labels, so no series restarts.
    assert json.loads(targets.targets_path(config).read_text()) == targets.targets_document(config, (SPARE,))
    assert started == [LIVE]  # the dead one comes back, as the spare: never a target
    assert [p.name for p in targets.targets_path(config).parent.iterdir()] == ["backend.json"]

    # And back: the spare that took over dies, the restarted one takes over.
    states.update({LIVE: "running", SPARE: "exited"})
    monkeypatch.setattr(keeper_main, "ready", lambda name: name == LIVE)
    keeper_main.heal({SPARE})
    assert targets.read_targets(config) == [LIVE]


def test_the_targets_are_rewritten_only_when_the_slots_change(deployed) -> None:
    config, _, _ = deployed
    before = targets.targets_path(config).stat().st_ino
    keeper_main.heal(set())  # nothing happened: the file is left as it is
    assert targets.targets_path(config).stat().st_ino == before
    # A file that went stale while no keeper ran (it names a drained replica too) is corrected.
    targets.write_targets(config, (LIVE,), ("shop-backend-green-1-d0",))
    keeper_main.heal(set())
    assert targets.read_targets(config) == [LIVE]


def test_a_failed_targets_write_never_holds_the_failover_and_is_retried(deployed, tmp_path: Path, monkeypatch, capsys) -> None:
    config, states, _ = deployed
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(keeper_main, "TARGETS", str(blocker / "backend.json"))
    states[LIVE] = "exited"
    keeper_main.heal({LIVE})
    assert keeper_main.links()[0] == {"slot-1.sock": SPARE}  # failed over all the same
    keeper_main.heal(set())
    assert capsys.readouterr().err.count("could not write the scrape targets") == 1  # said once, not every pass
    blocker.unlink()
    blocker.mkdir()
    keeper_main.heal(set())
    assert [g["labels"]["container"] for g in json.loads((blocker / "backend.json").read_text())] == [SPARE]


def test_without_monitoring_the_keeper_writes_no_targets(deployed, monkeypatch) -> None:
    config, states, _ = deployed
    monkeypatch.setattr(keeper_main, "TARGETS", "")
    states[LIVE] = "exited"
    keeper_main.heal({LIVE})
    assert keeper_main.links()[0] == {"slot-1.sock": SPARE}
    assert targets.read_targets(config) == [LIVE]  # untouched


def test_the_keeper_step_carries_the_targets_folder_only_with_monitoring(tmp_path: Path) -> None:
    on = make_config(tmp_path, **{"monitoring.enabled": True})
    (step,) = keeper_step(on, "x:1", None)
    assert Path(step.targets_dir) / TARGETS_FILE == targets.targets_path(on)
    assert KEEPER_TARGETS_DIR == "/flashfit/" + str(targets.targets_path(on).parent.relative_to(state_dir(on)))
    assert keeper_step(make_config(tmp_path), "x:1", None)[0].targets_dir == ""
    assert filesd.BACKEND_PORT == BACKEND_PORT  # filesd cannot import flashfit: its copy must agree


def test_the_keeper_script_runs_alone_beside_its_module(tmp_path: Path) -> None:
    """In its container the script sees only the standard library and the files mounted beside
    it: it must import from them, not from flashfit_ops."""
    for name, path in KEEPER_MODULES.items():
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= set(sys.stdlib_module_names), (name, imported - set(sys.stdlib_module_names))
        (tmp_path / f"{name}.py").write_text(Path(path).read_text(encoding="utf-8"))
    (tmp_path / "flashfit-keeper.py").write_text(KEEPER_SCRIPT.read_text(encoding="utf-8"))
    done = subprocess.run(
        [sys.executable, "-E", "-s", str(tmp_path / "flashfit-keeper.py")], capture_output=True, text=True, timeout=60,
        env={"KEEPER_PROJECT": "", "PATH": os.environ.get("PATH", "")}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "KEEPER_PROJECT and KEEPER_PROXY are required" in done.stderr, done.stderr
