"""The backup facade: the CLI reaches the backup package only through backup/api.py, which makes
the decisions (secrets read once per command, the retention policy, which restore runs); the CLI
only parses and renders."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from flashfit_ops.config import load_config, resolve
from flashfit_ops.config import secrets as secrets_module
from tests.integration.ops.test_backup_helpers import make_data, run_cli, write_config

CLI = Path(__file__).resolve().parents[3] / "flashfit_ops" / "cli" / "backup_cmds.py"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_cli_reaches_the_backup_package_only_through_the_facade() -> None:
    backup_imports = {m for m in imported_modules(CLI) if m.startswith("flashfit_ops.backup")}
    assert backup_imports <= {"flashfit_ops.backup.api", "flashfit_ops.backup.api.Feedback"}, backup_imports
    assert "os" not in imported_modules(CLI)  # the key's sources (file, environment, env file) are the facade's
    assert not {m for m in imported_modules(CLI) if m.startswith("flashfit_ops.config.secrets")}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A project with a data folder, a local target and an env file holding both secrets; nothing
    deployed (the engine is asked through its seam) and no server on the backend port."""
    for name in ("BACKUP_ENCRYPTION_KEY", "JWT_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    config_path = write_config(tmp_path / "site", target="file://./backups")
    make_data(tmp_path / "site" / "data", index_mb=0.01)
    env_file = tmp_path / "site" / ".env"
    env_file.write_text("JWT_SECRET_KEY=jwt-secret-for-tests-0123456789abcdef\nBACKUP_ENCRYPTION_KEY=a passphrase for the tests\n")
    env_file.chmod(0o600)
    monkeypatch.setattr("flashfit_ops.backup.deployed.find_deployment", lambda config, backend=None: (None, None))
    reads: list[str] = []
    original = secrets_module.load_secrets

    def counting(config: Any, environ: Any = None) -> dict[str, str]:
        reads.append(str(config.base_dir))
        return original(config, environ)

    monkeypatch.setattr(secrets_module, "load_secrets", counting)
    return {"config": config_path, "reads": reads}


@pytest.mark.parametrize("server", [[], ["--server", "http://127.0.0.1:9"]], ids=["deployed-or-backend-port", "given-server"])
def test_a_backup_with_secrets_reads_the_env_file_once(site: dict[str, Any], server: list[str]) -> None:
    code, result, out = run_cli("backup", "create", "--include-secrets", "--json", "-c", str(site["config"]), *server)
    assert code == 0, out
    assert result is not None and any(f["path"].startswith("secrets/") for f in load_manifest_files(site["config"], result["id"]))
    assert len(site["reads"]) == 1, site["reads"]


def load_manifest_files(config_path: Path, backup_id: str) -> list[dict[str, Any]]:
    from flashfit_ops.backup.manifest import Manifest, manifest_key
    from flashfit_ops.backup.store import open_store

    config = load_config(config_path, env="prod")
    data = open_store(config.backup.target, config).get_bytes(manifest_key(backup_id))
    manifest = Manifest.from_json(data, expected_id=backup_id)
    return [{"path": entry.path} for entry in manifest.files]


def test_a_dry_run_restore_never_asks_the_engine(site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from flashfit_ops.backup import api

    code, created, out = run_cli("backup", "create", "--no-server", "--json", "-c", str(site["config"]))
    assert code == 0, out

    def refuse(config: Any, backend: Any = None) -> Any:
        raise AssertionError("a dry run asked the Docker engine")

    monkeypatch.setattr("flashfit_ops.backup.deployed.find_deployment", refuse)
    result = api.restore(load_config(site["config"], env="prod"), site["config"], dry_run=True)
    assert result["id"] == created["id"] and result["dry_run"] is True
    assert result["changes"]["add"] == [] and result["changes"]["remove"] == []


def test_the_retention_policy_takes_the_config_and_overrides_each_number(tmp_path: Path) -> None:
    from flashfit_ops.backup import api

    config = resolve({"backup": {"retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4}}}, environ={}, base_dir=tmp_path)
    assert api.retention_policy(config, None, None, None) == api.retention_policy(config, 3, 7, 4)
    policy = api.retention_policy(config, 0, None, 1)
    assert (policy.keep_last, policy.keep_daily, policy.keep_weekly) == (0, 7, 1)


def test_a_verify_report_fails_only_with_damage() -> None:
    from flashfit_ops.backup import api

    whole = {"ok": True, "backups": [{"id": "a", "ok": True, "problems": []}]}
    assert api.damage_error(whole) is None
    broken = {"ok": False, "backups": [{"id": "a", "ok": True, "problems": []},
                                       {"id": "b", "ok": False, "problems": [{"path": "x", "blob": "k", "problem": "blob is missing"}] * 2}]}
    error = api.damage_error(broken)
    assert error is not None and error.exit_code == 5
    assert error.message == "1 backup(s) damaged, 2 problem(s)" and error.details is broken
    assert [b["id"] for b in api.damaged(broken)] == ["b"]
