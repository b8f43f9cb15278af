"""Shared test helpers. A component a test needs that is missing FAILS the test: CI must never
pass by skipping (see .ci/run, which installs every component)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run (or apt-get install the package providing it)")
    return path


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """The commented example that `flashfit init` writes, in a fresh folder."""
    from flashfit_ops.config.example import write_example

    path = tmp_path / "flashfit.yml"
    write_example(path)
    return path
