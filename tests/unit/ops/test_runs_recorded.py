"""recorded_run: the one wrapper of every command that changes something. It holds the deploy
lock (LockHeld, exit 4, when another command has it), turns SIGTERM into an interrupted run,
writes one start and one finish record of the one shape however the block ends, and the history
reader gives files written before that shape back in it."""

from __future__ import annotations

import ast
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from flashfit_ops.errors import EXIT_LOCKED, IntegrityFailure, LockHeld, OperationFailed, UsageError
from flashfit_ops.runs import history as hist
from flashfit_ops.runs.lock import DeployLock, LockInfo, lock_status
from flashfit_ops.runs.recorded import deploy_lock, history_path, lock_path, outcome, recorded_run
from tests.unit.ops.test_plan_strategies import make_config

REPO = Path(__file__).resolve().parents[3]


def records(config) -> list[dict]:
    return hist.read_raw(history_path(config))


def test_the_lock_and_history_live_in_the_projects_state_folder(tmp_path: Path) -> None:
    from flashfit_ops.plan.common import state_dir

    config = make_config(tmp_path)
    assert (lock_path(config), history_path(config)) == (state_dir(config) / "lock", state_dir(config) / "history.jsonl")


def test_a_successful_run_holds_the_lock_and_writes_one_start_and_one_finish(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with recorded_run(config, "deploy", strategy="rolling", version="v2", previous_version="v1", replicas=2, message="why") as run:
        assert lock_status(lock_path(config)).held
        run.details["ready_seconds"] = {"a": 1.5}
    assert not lock_status(lock_path(config)).held
    start, finish = records(config)
    assert set(start) == {"event", "v", *hist.START_FIELDS, "details"}
    assert set(finish) == {"event", "v", *hist.FINISH_FIELDS, "details"}
    assert (start["id"], finish["id"]) == (run.id, run.id)
    assert start["previous_version"] == "v1" and start["message"] == "why" and start["pid"] == os.getpid()
    assert (finish["result"], finish["exit_code"], finish["error"]) == ("success", 0, None)
    entry = hist.entries(history_path(config))[0]
    assert entry["ready_seconds"] == {"a": 1.5} and entry["version"] == "v2" and entry["result"] == "success"


def test_every_kind_writes_the_same_record_shape(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with recorded_run(config, "prune", strategy="images") as run:
        run.details["removed"] = ["v0"]
    with recorded_run(config, "restore", details={"backup_ref": "latest"}):
        pass
    shapes = {(r["event"], tuple(sorted(r))) for r in records(config)}
    assert len(shapes) == 2  # one start shape and one finish shape for both kinds


def test_the_lock_held_by_another_command_is_exit_4_naming_the_holder_and_records_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    other = DeployLock(lock_path(config))
    other.acquire(LockInfo.mine(command="flashfit deploy", message="release 7"))
    ran = False
    try:
        with pytest.raises(LockHeld) as caught:
            with recorded_run(config, "stop", lock_wait=0):
                ran = True
    finally:
        other.release()
    assert not ran
    assert caught.value.exit_code == EXIT_LOCKED == 4
    assert caught.value.message.startswith("another deploy holds the lock: ") and "flashfit deploy (release 7)" in caught.value.message
    assert "--lock-wait" in (caught.value.hint or "")
    assert records(config) == []


def test_sigterm_inside_the_run_is_recorded_as_interrupted_and_releases_the_lock(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    before = signal.getsignal(signal.SIGTERM)  # not always SIG_DFL: a fixture of another file may own it
    with pytest.raises(KeyboardInterrupt):
        with recorded_run(config, "deploy", version="v2"):
            assert signal.getsignal(signal.SIGTERM) != before
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    finish = records(config)[-1]
    assert (finish["result"], finish["exit_code"], finish["error"]) == ("interrupted", 130, None)
    assert not lock_status(lock_path(config)).held


def test_an_exception_is_a_failed_record_and_the_error_carries_the_run_id(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with pytest.raises(RuntimeError):
        with recorded_run(config, "down"):
            raise RuntimeError("boom")
    finish = records(config)[-1]
    assert (finish["result"], finish["exit_code"], finish["error"]) == ("failed", 1, "RuntimeError: boom")
    with pytest.raises(UsageError) as caught:
        with recorded_run(config, "rollback") as run:
            raise UsageError("version v9 is not retained here")
    assert caught.value.details["deploy_id"] == run.id
    finish = records(config)[-1]
    assert (finish["result"], finish["exit_code"], finish["error"]) == ("failed", 2, "version v9 is not retained here")
    assert not lock_status(lock_path(config)).held


def test_an_undone_failure_is_rolled_back_and_a_damaged_backup_refused() -> None:
    assert outcome(None) == ("success", 0)
    assert outcome(OperationFailed("x"), rolled_back=True) == ("rolled_back", 1)
    assert outcome(OperationFailed("x", details={"undone": True})) == ("rolled_back", 1)
    assert outcome(OperationFailed("x")) == ("failed", 1)
    assert outcome(IntegrityFailure("x")) == ("refused", 5)
    assert outcome(KeyboardInterrupt()) == ("interrupted", 130)
    assert outcome(ValueError("x")) == ("failed", 1)


def test_a_run_inside_a_held_deploy_lock_takes_it_once(tmp_path: Path) -> None:
    """A deploy repairs first under the same lock: the nested run must not wait for itself."""
    config = make_config(tmp_path)
    with deploy_lock(config, lock_wait=0, message="deploy"):
        with recorded_run(config, "repair", lock_wait=0):
            assert lock_status(lock_path(config)).held
        assert lock_status(lock_path(config)).held
    assert not lock_status(lock_path(config)).held
    assert [r["event"] for r in records(config)] == ["start", "finish"]


def test_another_thread_of_the_same_process_does_not_share_the_lock(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    raised: list[BaseException] = []

    def second() -> None:
        try:
            with recorded_run(config, "deploy", lock_wait=0):
                pass
        except LockHeld as error:
            raised.append(error)

    with deploy_lock(config, lock_wait=0):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(raised) == 1 and records(config) == []


OLD_HISTORY = [  # what each command wrote before the one shape (schema 1)
    {"event": "start", "id": "d1", "kind": "deploy", "strategy": "rolling", "version": "v1", "previous_version": None,
     "replicas": 2, "who": "ann", "host": "h", "pid": 1, "message": "", "started_at": "2025-01-01T00:00:00+00:00"},
    {"event": "finish", "id": "d1", "result": "success", "finished_at": "2025-01-01T00:01:00+00:00", "duration_s": 60.0,
     "error": None, "ready_seconds": {"x": 2.0}, "rolled_back": False, "warnings": []},
    {"event": "start", "id": "s1", "kind": "deploy", "strategy": "swarm-rolling", "version": "v2", "who": "ann",
     "host": "h", "pid": 2, "message": "", "started_at": "2025-01-02T00:00:00+00:00"},
    {"event": "finish", "id": "s1", "result": "failed", "error": "no", "finished_at": "2025-01-02T00:01:00+00:00", "duration_s": 5},
    {"event": "start", "id": "r1", "kind": "restore", "strategy": "stop-start", "live_version": "v1", "containers": ["c1"],
     "backup_ref": "latest", "who": "ann", "host": "h", "pid": 3, "message": "restore latest", "started_at": "2025-01-03T00:00:00+00:00"},
    {"event": "finish", "id": "r1", "result": "success", "backup": "B1", "error": None, "downtime_s": 3.0, "ready_seconds": {},
     "warnings": [], "finished_at": "2025-01-03T00:01:00+00:00", "duration_s": 9.0},
    {"event": "start", "id": "k1", "kind": "stop", "strategy": "stop", "version": "v1", "who": "ann", "host": "h", "pid": 4,
     "message": "", "started_at": "2025-01-04T00:00:00+00:00"},
]  # fmt: skip


def test_a_history_written_before_the_one_shape_reads_back_in_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = history_path(config)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in OLD_HISTORY))
    entries = hist.entries(path)
    for entry in entries:
        assert set(hist.START_FIELDS) | set(hist.FINISH_FIELDS) <= set(entry)
    deploy, swarm, restore, stop = entries
    assert deploy["ready_seconds"] == {"x": 2.0} and deploy["result"] == "success"
    assert swarm["previous_version"] is None and swarm["warnings"] == [] and swarm["error"] == "no"
    assert restore["previous_version"] == "v1" and restore["backup"] == "B1" and restore["containers"] == ["c1"]
    assert stop["result"] == "interrupted" and stop["finished_at"] is None
    assert hist.successful_versions(path) == ["v1"]
    # New records append to an old file, and read back beside the old ones.
    with recorded_run(config, "deploy", version="v3"):
        pass
    assert [e["version"] for e in hist.entries(path)] == ["v1", "v2", None, "v1", "v3"]
    assert hist.successful_versions(path) == ["v3", "v1"]


def test_a_prune_after_a_stop_leaves_the_stop_the_last_word_on_the_service(tmp_path: Path) -> None:
    """A prune is recorded but serves nothing: status and repair still see the stop."""
    from flashfit_ops.execute.service import stopped_on_purpose

    config = make_config(tmp_path)
    with recorded_run(config, "stop"):
        pass
    with recorded_run(config, "prune", strategy="images"):
        pass
    assert hist.entries(history_path(config))[-1]["kind"] == "prune"
    assert stopped_on_purpose(config)


def test_images_and_backup_no_longer_import_the_executor_package() -> None:
    """The lock and the history moved to flashfit_ops.runs: nothing in images/ or backup/deployed
    reaches into execute.service for them (images <-> execute was an import cycle)."""
    offenders = []
    for file in [*(REPO / "flashfit_ops" / "images").glob("*.py"), *(REPO / "flashfit_ops" / "runs").glob("*.py")]:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flashfit_ops.execute"):
                offenders.append(f"{file.name}: {node.module}")
    assert offenders == []
    deployed = ast.parse((REPO / "flashfit_ops" / "backup" / "deployed.py").read_text())
    assert not [n for n in ast.walk(deployed) if isinstance(n, ast.ImportFrom) and n.module == "flashfit_ops.execute.service"]


def test_a_swarm_deploy_writes_the_same_record_shape_as_a_local_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Swarm path once wrote a finish with only result and error (no warnings, no exit code)."""
    from types import SimpleNamespace

    from flashfit_ops.execute import service
    from flashfit_ops.swarm import deploy as swarm

    config = make_config(tmp_path)
    monkeypatch.setattr(swarm, "live_version", lambda client, cfg: "v1")
    backend = SimpleNamespace(client=None)
    done = service._swarm_recorded(config, backend, service.Run("deploy", "swarm-rolling", "v2", 3), lambda: {"result": "success"})

    def broken() -> dict:
        raise OperationFailed("tasks never ran")

    with pytest.raises(OperationFailed):
        service._swarm_recorded(config, backend, service.Run("deploy", "swarm-rolling", "v3", 3), broken)
    with recorded_run(config, "deploy", strategy="rolling", version="v4"):
        pass
    shapes = {(r["event"], tuple(sorted(r))) for r in records(config)}
    assert len(shapes) == 2
    entries = hist.entries(history_path(config))
    assert [(e["id"], e["previous_version"], e["result"], e["exit_code"], e["error"]) for e in entries[:2]] == [
        (done["id"], "v1", "success", 0, None), (entries[1]["id"], "v1", "failed", 1, "tasks never ran")]
