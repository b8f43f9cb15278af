"""The type checker holds the engine boundary (flashfit_ops/engine/protocol.py): mypy, configured
in pyproject.toml ([tool.mypy]), passes on flashfit_ops, flashfit_contract, flashfit_server and
the executor tests' fake engine, and refuses an engine call that the protocol does not name.
`make test` runs mypy too."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_mypy_passes_on_flashfit_ops_and_the_fake_engine() -> None:
    result = mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_the_check_covers_every_package_and_silences_none() -> None:
    """The server is read as strictly as the base settings say: it is in `files`, and no override
    switches errors off for any module (narrower settings, such as a module's unused ignores,
    are allowed)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"flashfit_ops", "flashfit_contract", "flashfit_server"} <= set(config["files"])
    silenced = [o["module"] for o in config.get("overrides", []) if o.get("ignore_errors")]
    assert silenced == []


def test_an_engine_call_outside_the_protocol_fails_the_check(tmp_path: Path) -> None:
    snippet = (
        "from flashfit_ops.engine.protocol import Engine, EngineClient\n"
        "def prune(client: EngineClient) -> None:\n"
        "    client.containers.prune()\n"
        "def untyped(backend: Engine) -> None:\n"
        "    backend.client.containers.list()\n"
    )
    misuse = tmp_path / "engine_misuse.py"
    misuse.write_text(snippet)
    result = mypy(str(misuse))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"Containers" has no attribute "prune"' in result.stdout
    assert '"Engine" has no attribute "client"' in result.stdout
