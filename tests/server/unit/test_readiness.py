from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from flashfit_server.readiness import READY_DIR_ENV, WorkerReadiness


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_lone_worker_needs_no_shared_folder(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv(READY_DIR_ENV, str(tmp_path))
    lone = WorkerReadiness.from_env(workers=1)
    assert not lone.shared and lone.ready_workers() == 0
    lone.mark_ready()
    assert list(tmp_path.iterdir()) == []


def test_ready_only_when_every_live_worker_has_marked(tmp_path: Path) -> None:
    readiness = WorkerReadiness(tmp_path, expected=2)
    readiness.mark_ready()
    assert readiness.ready_workers() == 1
    sibling = _sleeper()
    try:
        (tmp_path / str(sibling.pid)).touch()
        assert readiness.ready_workers() == 2
        sibling.kill()  # and not reaped: a zombie must not count
        deadline = time.monotonic() + 5
        while readiness.ready_workers() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Path(f"/proc/{sibling.pid}").exists()  # still there, as a zombie
        assert readiness.ready_workers() == 1
    finally:
        sibling.kill()
        sibling.wait()
    assert readiness.ready_workers() == 1
    readiness.withdraw()
    assert not (tmp_path / str(os.getpid())).exists() and readiness.ready_workers() == 0


def test_stray_files_and_a_missing_folder_count_as_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert WorkerReadiness(tmp_path, expected=1).ready_workers() == 0
    gone = WorkerReadiness(tmp_path / "gone", expected=2)
    assert gone.ready_workers() == 0
