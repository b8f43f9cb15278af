"""Image versions: the git short SHA, with a -dirty-<hash of the diff> suffix for uncommitted work."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flashfit_ops.config.load import resolve
from flashfit_ops.errors import UsageError
from flashfit_ops.images.build import (
    LABEL_BUILD_TIME,
    LABEL_GIT_SHA,
    LABEL_PROJECT,
    LABEL_VERSION,
    SourceState,
    build_labels,
    check_version,
    source_state,
    version_from_state,
)
from tests.conftest import require_tool


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    require_tool("git")
    folder = tmp_path / "src"
    folder.mkdir()
    git(folder, "init", "-q")
    git(folder, "config", "user.email", "t@example.com")
    git(folder, "config", "user.name", "t")
    (folder / "app.py").write_text("print('hi')\n")
    git(folder, "add", "app.py")
    git(folder, "commit", "-qm", "one")
    return folder


def test_clean_tree_is_the_short_sha(repo: Path) -> None:
    state = source_state(repo)
    assert state is not None
    assert state.sha == git(repo, "rev-parse", "HEAD")
    assert state.dirty_hash is None
    assert version_from_state(state) == state.short == git(repo, "rev-parse", "--short=7", "HEAD")


def test_uncommitted_changes_add_a_suffix_that_follows_the_diff(repo: Path) -> None:
    (repo / "app.py").write_text("print('one')\n")
    first = version_from_state(source_state(repo))
    assert re.fullmatch(r"[0-9a-f]{7}-dirty-[0-9a-f]{8}", first)
    assert first == version_from_state(source_state(repo)), "the same diff gives the same version"
    (repo / "app.py").write_text("print('two')\n")
    second = version_from_state(source_state(repo))
    assert second != first and second[:7] == first[:7]


def test_untracked_files_make_the_tree_dirty_and_ignored_ones_do_not(repo: Path) -> None:
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore logs")
    (repo / "debug.log").write_text("noise")
    assert source_state(repo).dirty_hash is None
    (repo / "new.py").write_text("x = 1\n")
    dirty = source_state(repo).dirty_hash
    assert dirty is not None
    (repo / "new.py").write_text("x = 2\n")
    assert source_state(repo).dirty_hash != dirty, "an untracked file's content counts"


def test_outside_git_there_is_no_state(tmp_path: Path) -> None:
    assert source_state(tmp_path) is None


@pytest.mark.parametrize("good", ["1.4.0", "abc1234-dirty-0123abcd", "v2_rc.1", "a" * 128])
def test_valid_tags_pass(good: str) -> None:
    assert check_version(good) == good


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a:b", "a/b", "a b", "a" * 129])
def test_invalid_tags_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        check_version(bad)


def test_labels_carry_project_version_sha_and_time() -> None:
    config = resolve({"project": "shop"})
    state = SourceState(sha="f" * 40, short="fffffff", dirty_hash=None)
    labels = build_labels(config, "fffffff", state, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert labels == {
        LABEL_PROJECT: "shop",
        LABEL_VERSION: "fffffff",
        LABEL_GIT_SHA: "f" * 40,
        LABEL_BUILD_TIME: "2026-01-02T03:04:05Z",
    }
    assert build_labels(config, "1.0", None)[LABEL_GIT_SHA] == "unknown"
