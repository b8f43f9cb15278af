"""Issue 14, category 4: every name a manifest carries, not only the data paths, is checked when
the manifest is read (so `backup verify` reports it, exit 5), and a restore never widens modes.
A backup target is writable by whoever can write the store: its manifests are hostile input."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from .test_backup_helpers import make_data, read_tree, run_cli, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def site(tmp_path: Path) -> dict:
    config = write_config(tmp_path / "site", target="file://./backups")
    config.chmod(0o600)
    data = tmp_path / "site" / "data"
    return {"config": config, "data": data, "files": make_data(data, seed=5), "backups": tmp_path / "site" / "backups"}


def cli(site: dict, *args: str):  # noqa: ANN201
    return run_cli(*args, "-c", str(site["config"]), "--json")


def backup(site: dict) -> str:
    code, result, out = cli(site, "backup", "create", "--no-server")
    assert code == 0, out
    return result["id"]


def tamper(site: dict, backup_id: str, change) -> None:  # noqa: ANN001
    """Rewrite a manifest in place, as someone with write access to the backup target would."""
    path = site["backups"] / "snapshots" / f"{backup_id}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["../../../private.txt", "/etc/hostname", "rendered/nginx.conf", "flash\nfit.yml"])
def test_config_file_name_outside_the_backup_is_refused_at_verify_and_restore(site: dict, name: str) -> None:
    """--apply-config copied review/config/<name> over flashfit.yml: with `..` in the name that was
    any local file (here a private one), and it became world-readable."""
    private = site["config"].parent.parent / "private.txt"
    private.write_text("replicas: 3\n# not for everyone\n")
    private.chmod(0o600)
    backup_id = backup(site)
    tamper(site, backup_id, lambda doc: doc["extra"].update(config_file=name))
    config_before = site["config"].read_bytes()

    code, report, out = cli(site, "backup", "verify", backup_id)
    assert code == 5, out
    assert "config file name" in json.dumps(report)

    code, error, out = cli(site, "restore", backup_id, "--apply-config")
    assert code == 5, out
    assert site["config"].read_bytes() == config_before
    assert mode(site["config"]) == 0o600
    assert not list(site["config"].parent.glob("flashfit.yml.previous-*"))


@pytest.mark.parametrize("path", ["data/" + "n" * 256, "data/" + "/".join(["d" * 220] * 20) + "/x"])
def test_names_too_long_for_the_filesystem_fail_verify_and_restore_with_exit_5(site: dict, path: str) -> None:
    backup_id = backup(site)

    def add_long(doc: dict) -> None:
        first = dict(doc["files"][0])
        doc["files"].append({**first, "path": path})

    tamper(site, backup_id, add_long)
    before = read_tree(site["data"])
    code, _, out = cli(site, "backup", "verify", backup_id)
    assert code == 5, out
    code, error, out = cli(site, "restore", backup_id)
    assert code == 5, out
    assert "too long" in error["message"] or "longer than" in error["message"]
    assert read_tree(site["data"]) == before


def test_restore_never_widens_modes(site: dict) -> None:
    """A manifest may say 0o777 for a data file or 0o666 for the config: restored files never let
    others write, and an applied flashfit.yml keeps the narrower mode of the file it replaces."""
    backup_id = backup(site)

    def widen(doc: dict) -> None:
        for entry in doc["files"]:
            entry["mode"] = 0o777 if entry["path"].startswith("data/") else 0o666

    tamper(site, backup_id, widen)
    code, result, out = cli(site, "restore", backup_id, "--apply-config")
    assert code == 0, out
    assert read_tree(site["data"]) == site["files"]
    assert {mode(p) for p in site["data"].rglob("*") if p.is_file()} == {0o755}
    assert mode(site["config"]) == 0o600
    (kept,) = site["config"].parent.glob("flashfit.yml.previous-*")
    assert mode(kept) == 0o600
    review = Path(result["review_folder"])
    assert all(not mode(p) & 0o022 for p in review.rglob("*") if p.is_file())
