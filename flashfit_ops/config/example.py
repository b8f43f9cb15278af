"""The commented example that `flashfit init` writes: documentation and test fixture at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flashfit_ops.fileio import atomic_write_text


def example_text() -> str:
    return resources.files("flashfit_ops.config").joinpath("example.yml").read_text(encoding="utf-8")


def write_example(path: Path) -> None:
    atomic_write_text(path, example_text())
