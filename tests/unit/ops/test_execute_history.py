"""History: start and finish records merged; a deploy killed outright reads as interrupted."""

from __future__ import annotations

from pathlib import Path

from flashfit_ops.execute import history


def test_entries_merge_and_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history.append(path, {"event": "start", "id": "1", "version": "v1", "strategy": "single"})
    history.append(path, {"event": "finish", "id": "1", "result": "success", "duration_s": 3.2})
    history.append(path, {"event": "start", "id": "2", "version": "v2", "strategy": "single"})
    with path.open("a") as handle:
        handle.write('{"event": "fini')  # a torn line
    entries = history.entries(path)
    assert [(e["id"], e["result"]) for e in entries] == [("1", "success"), ("2", "interrupted")]
    assert entries[0]["duration_s"] == 3.2
    assert history.successful_versions(path) == ["v1"]
    assert history.entries(tmp_path / "none.jsonl") == []
