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


def test_every_server_command_and_variable_is_in_the_servers_section() -> None:
    import argparse

    from flashfit_server.cli import build_parser
    from flashfit_server.settings import __doc__ as settings_doc

    section = README[README.index("## The server: `flashfit-server`") : README.index("## Exit codes")]
    commands = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if not subparsers:
            commands.append(prefix)
        for action in subparsers:
            for name, sub in action.choices.items():
                walk(sub, f"{prefix} {name}")

    walk(build_parser(), "flashfit-server")
    assert "flashfit-server models make-tiny" in commands
    assert not [c for c in commands if f"\n{c} " not in section], "server commands without an example"
    variables = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", settings_doc or ""))
    assert "INFERENCE_TIMEOUT" in variables
    assert not [v for v in variables if f"`{v}`" not in section], "server variables not in the table"
