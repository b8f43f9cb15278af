"""The README is the front door: every command and every exit code is documented there."""

from __future__ import annotations

import re

import typer.main

from flashfit_ops.cli import app
from flashfit_ops.errors import EXIT_CODES
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def command_paths() -> list[str]:
    root = typer.main.get_command(app)
    paths = []

    def walk(command, prefix: str) -> None:
        if getattr(command, "commands", None):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                walk(sub, f"{prefix} {name}")
        else:
            paths.append(prefix)

    walk(root, "flashfit")
    assert "flashfit config validate" in paths
    return paths


def test_every_command_has_a_readme_section_with_an_example() -> None:
    missing = []
    for path in command_paths():
        heading = re.search(rf"^###+ `{re.escape(path)}[ `]", README, re.MULTILINE)
        if heading is None or path not in README[heading.end() :]:
            missing.append(path)
    assert not missing, f"commands without a README section and example: {missing}"


def test_every_exit_code_is_documented() -> None:
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", README, re.MULTILINE), f"exit code {code} missing from README"
