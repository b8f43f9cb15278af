"""Backups against a real S3 endpoint: moto in server mode over HTTP, addressed with endpoint_url
exactly as a user points flashfit at MinIO. Every fault of the brief: damaged blobs, interrupted
backups, transient errors, bad credentials, missing bucket, unreachable endpoint, bad URL."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .test_backup_helpers import (
    CREDENTIALS,
    FaultProxy,
    free_port,
    make_data,
    read_tree,
    run_cli,
    s3_client,
    start_moto,
    stop,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def moto_endpoint():
    proc, url = start_moto()
    yield url
    stop(proc)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def site(tmp_path: Path, moto_endpoint: str, bucket: str) -> dict:
    """A deployment folder with flashfit.yml pointing at the bucket, and a data folder."""
    config = write_config(tmp_path / "site", target=f"s3://{bucket}/flashfit/prod", endpoint=moto_endpoint)
    data = tmp_path / "site" / "data"
    files = make_data(data, seed=1)
    return {"config": config, "data": data, "files": files, "bucket": bucket, "prefix": "flashfit/prod/",
            "endpoint": moto_endpoint, "client": s3_client(moto_endpoint)}


def cli(site: dict, *args: str):  # noqa: ANN201
    return run_cli(*args, "-c", str(site["config"]), "--json")


def create(site: dict, *extra: str) -> dict:
    code, doc, out = cli(site, "backup", "create", "--no-server", *extra)
    assert code == 0, out
    return doc


def blob_keys(site: dict, backup_id: str) -> list[str]:
    body = site["client"].get_object(Bucket=site["bucket"], Key=f"{site['prefix']}snapshots/{backup_id}.json")["Body"].read()
    return [f for f in json.loads(body)["files"]]


def entry_for(site: dict, backup_id: str, path: str) -> dict:
    return next(f for f in blob_keys(site, backup_id) if f["path"] == path)


def object_key(site: dict, entry: dict) -> str:
    suffix = ".zst" if entry["compression"] == "zstd" else ""
    return f"{site['prefix']}blobs/{entry['blob'][:2]}/{entry['blob']}{suffix}"


def test_round_trip_through_s3(site: dict) -> None:
    first = create(site, "--tag", "nightly")
    assert first["source"] == "data-folder" and first["new_blobs"] > 0
    assert first["files"] == len(site["files"]) + 1 + first["files"] - len(site["files"]) - 1  # data + config
    code, listing, _ = cli(site, "backup", "list")
    assert code == 0 and [b["id"] for b in listing["backups"]] == [first["id"]]
    assert listing["backups"][0]["tag"] == "nightly"
    code, report, out = cli(site, "backup", "verify", "latest", "--read-data")
    assert code == 0 and report["ok"] and report["read_bytes"] > 0, out

    # The data changes; the restore brings back exactly the backed-up folder.
    shutil.rmtree(site["data"])
    make_data(site["data"], seed=2, items=5)
    code, plan, out = cli(site, "restore", "latest", "--dry-run")
    assert code == 0, out
    assert read_tree(site["data"]) != site["files"]  # dry run touched nothing
    assert "images/4.png" in plan["changes"]["remove"] and "clip-0000000001.index" in plan["changes"]["add"]
    code, result, out = cli(site, "restore", first["id"])
    assert code == 0, out
    assert read_tree(site["data"]) == site["files"]
    previous = Path(result["previous"])
    assert previous.name.startswith("data.previous-") and (previous / "images" / "4.png").is_file()
    review = Path(result["review_folder"])
    assert review == site["config"].parent / f"restore-{first['id']}"
    assert (review / "config" / "flashfit.yml").read_bytes() == site["config"].read_bytes()
    assert (review / "config" / "rendered" / "docker-compose.prod.yml").is_file()
    assert not list(site["data"].parent.glob(".data.restore-*"))  # the staging folder became live


def test_second_backup_of_unchanged_data_uploads_nothing(site: dict) -> None:
    first = create(site)
    second = create(site)
    assert second["uploaded_bytes"] == 0 and second["new_blobs"] == 0
    assert second["reused_blobs"] == first["new_blobs"] + first["reused_blobs"]
    # a changed index uploads that file only
    (site["data"] / "items.json").write_text('{"items": []}')
    third = create(site)
    assert third["new_blobs"] == 1


def test_large_index_goes_through_multipart(site: dict, tmp_path: Path) -> None:
    import numpy as np

    big = np.random.default_rng(5).standard_normal(9 * 1024 * 1024).astype(np.float32).tobytes()  # 36 MiB
    (site["data"] / "fashion-0000000001.index").write_bytes(big)
    result = create(site)
    entry = entry_for(site, result["id"], "data/fashion-0000000001.index")
    assert entry["compression"] == "none"  # float32 noise does not compress: stored raw
    head = site["client"].head_object(Bucket=site["bucket"], Key=object_key(site, entry))
    assert "-" in head["ETag"]  # a multipart upload's ETag is md5-of-md5s "-<parts>"
    shutil.rmtree(site["data"])
    code, _, out = cli(site, "restore", "latest")
    assert code == 0, out
    assert (site["data"] / "fashion-0000000001.index").read_bytes() == big


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_damaged_blob_is_named_by_verify_and_refused_by_restore(site: dict, damage: str) -> None:
    backup = create(site)
    entry = entry_for(site, backup["id"], "data/clip-0000000001.index")
    key = object_key(site, entry)
    client = site["client"]
    body = client.get_object(Bucket=site["bucket"], Key=key)["Body"].read()
    if damage == "corrupt":
        client.put_object(Bucket=site["bucket"], Key=key, Body=bytes([body[0] ^ 0xFF]) + body[1:])
    elif damage == "truncate":
        client.put_object(Bucket=site["bucket"], Key=key, Body=body[: len(body) // 2])
    else:
        client.delete_object(Bucket=site["bucket"], Key=key)

    code, report, out = cli(site, "backup", "verify", backup["id"], "--read-data")
    assert code == 5, out
    problems = report["details"]["backups"][0]["problems"]
    assert [p["path"] for p in problems] == ["data/clip-0000000001.index"]
    assert problems[0]["blob"] == key.removeprefix(site["prefix"])
    if damage != "corrupt":  # size checks catch these without downloading anything
        code, _, out = cli(site, "backup", "verify", backup["id"])
        assert code == 5 and "clip-0000000001.index" in out

    # the live data changes after the backup; the refused restore must leave it exactly so
    (site["data"] / "items.json").write_text('{"items": ["newer"]}')
    before = read_tree(site["data"])
    code, error, out = cli(site, "restore", backup["id"])
    assert code == 5, out
    assert "clip-0000000001.index" in error["message"]
    assert read_tree(site["data"]) == before
    assert not list(site["data"].parent.glob(".data.restore-*")) and not list(site["data"].parent.glob("data.previous-*"))


def test_corruption_found_only_while_restoring_leaves_live_data(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A same-size corruption passes the listing check; the hash check during download catches it."""
    backup = create(site)
    entry = entry_for(site, backup["id"], "data/blip-0000000001.index")
    key = object_key(site, entry)
    body = site["client"].get_object(Bucket=site["bucket"], Key=key)["Body"].read()
    site["client"].put_object(Bucket=site["bucket"], Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    before = read_tree(site["data"])
    code, error, out = cli(site, "restore", backup["id"])
    assert code == 5 and "blip-0000000001.index" in error["message"] and "corrupt" in error["message"], out
    assert read_tree(site["data"]) == before


def test_interrupted_backup_is_not_listed_and_its_blobs_are_reused(site: dict) -> None:
    from flashfit_ops.backup.engine import create_backup
    from flashfit_ops.backup.store import open_store
    from flashfit_ops.config import load_config

    config = load_config(site["config"])
    store = open_store(config.backup.target, config)

    class Interrupt:
        seen = 0

        def start(self, description: str, total: int) -> None:
            pass

        def advance(self, amount: int) -> None:
            self.seen += amount
            if self.seen > 1024 * 1024:  # after the first blob is up
                raise KeyboardInterrupt

        def finish(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        create_backup(config, store, progress=Interrupt(), workers=1)
    blobs = site["client"].list_objects_v2(Bucket=site["bucket"], Prefix=site["prefix"] + "blobs/").get("KeyCount", 0)
    assert blobs >= 1
    code, listing, _ = cli(site, "backup", "list")
    assert code == 0 and listing["backups"] == []
    done = create(site)
    assert done["reused_blobs"] >= 1
    code, listing, _ = cli(site, "backup", "list")
    assert [b["id"] for b in listing["backups"]] == [done["id"]]


def test_transient_errors_are_retried(site: dict) -> None:
    """Each blob PUT fails 4 times with 503 SlowDown, more than botocore's attempts (2 here), so
    the per-blob retry with backoff has to carry it; each blob GET is dropped once on the restore."""
    from flashfit_ops.backup import store as store_module

    def rule(method: str, path: str, count: int) -> str | None:
        if method == "PUT" and "/blobs/" in path:
            return "503" if count <= 4 else None
        if method == "GET" and "/blobs/" in path:
            return "drop" if count == 1 else None
        return None

    proxy = FaultProxy(site["endpoint"], rule)
    old_base, old_attempts = store_module.BACKOFF_BASE, store_module.BOTO_MAX_ATTEMPTS
    store_module.BACKOFF_BASE, store_module.BOTO_MAX_ATTEMPTS = 0.05, 2
    try:
        text = site["config"].read_text().replace(site["endpoint"], proxy.url)
        site["config"].write_text(text)
        result = create(site)
        assert result["new_blobs"] > 0 and proxy.injected["503"] >= 4 * result["new_blobs"]
        shutil.rmtree(site["data"])
        code, _, out = cli(site, "restore", "latest")
        assert code == 0, out
        assert proxy.injected["drop"] >= 1
        assert read_tree(site["data"]) == site["files"]
    finally:
        store_module.BACKOFF_BASE, store_module.BOTO_MAX_ATTEMPTS = old_base, old_attempts
        proxy.close()


def test_missing_bucket_exits_3(site: dict) -> None:
    site["config"].write_text(site["config"].read_text().replace(site["bucket"], "no-such-bucket-here"))
    code, error, out = cli(site, "backup", "create", "--no-server")
    assert code == 3, out
    assert "no-such-bucket-here" in error["message"] and "does not exist" in error["message"]


def test_unreachable_endpoint_exits_3(site: dict) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    site["config"].write_text(site["config"].read_text().replace(site["endpoint"], dead))
    code, error, out = cli(site, "backup", "list")
    assert code == 3, out
    assert "cannot reach" in error["message"] and dead in error["message"]


def test_bad_url_exits_2(site: dict) -> None:
    code, error, out = cli(site, "backup", "create", "--no-server", "--to", "s3://Bad_Bucket/x")
    assert code == 2 and "bad backup URL" in error["message"], out
    code, error, out = cli(site, "backup", "list", "--from", "ftp://host/x")
    assert code == 2, out


def test_wrong_credentials_exit_3(tmp_path: Path) -> None:
    """A second endpoint that enforces authentication: unknown keys are rejected."""
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        config = write_config(tmp_path / "site", target="s3://some-bucket/x", endpoint=url)
        make_data(tmp_path / "site" / "data")
        code, error, out = run_cli("backup", "create", "--no-server", "-c", str(config), "--json")
        assert code == 3, out
        assert "rejected the credentials" in error["message"]
        assert "testing" not in out  # the key id is never echoed back by us
    finally:
        stop(proc)


def test_prune_by_policy_then_unreferenced_blobs(site: dict) -> None:
    from flashfit_ops.backup.engine import create_backup
    from flashfit_ops.backup.store import open_store
    from flashfit_ops.config import load_config

    config = load_config(site["config"])
    store = open_store(config.backup.target, config)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids = []
    for day in range(4):
        make_data(site["data"], seed=10 + day)  # new index files each day
        ids.append(create_backup(config, store, now=start + timedelta(days=day))["id"])

    code, plan, out = cli(site, "backup", "prune", "--keep-last", "1", "--keep-daily", "2", "--keep-weekly", "0", "--dry-run")
    assert code == 0, out
    assert plan["forget"] == sorted(ids[:2]) and plan["deleted_blobs"] > 0
    code, listing, _ = cli(site, "backup", "list")
    assert len(listing["backups"]) == 4  # dry run deleted nothing

    code, result, out = cli(site, "backup", "prune", "--keep-daily", "0", "--keep-weekly", "0")  # keep_last 2 from config
    assert code == 0, out
    assert result["forget"] == sorted(ids[:2]) and result["freed_bytes"] > 0
    code, listing, _ = cli(site, "backup", "list")
    assert [b["id"] for b in listing["backups"]] == ids[2:]
    code, report, out = cli(site, "backup", "verify", "all", "--read-data")
    assert code == 0 and report["ok"], out
    # no blob left that no manifest needs
    keys = {o["Key"] for o in site["client"].list_objects_v2(Bucket=site["bucket"], Prefix=site["prefix"] + "blobs/")["Contents"]}
    needed = {object_key(site, e) for i in ids[2:] for e in blob_keys(site, i)}
    assert keys == needed


def test_prune_waits_for_a_running_backup(site: dict) -> None:
    from flashfit_ops.backup.engine import acquire_lock
    from flashfit_ops.backup.store import open_store
    from flashfit_ops.config import load_config

    create(site)
    config = load_config(site["config"])
    lock = acquire_lock(open_store(config.backup.target, config), "backup", "20250101T000000Z-00000000")
    try:
        code, error, out = cli(site, "backup", "prune", "--keep-last", "1")
        assert code == 4 and "backup is running" in error["message"], out
    finally:
        lock.release()
    code, _, out = cli(site, "backup", "prune", "--keep-last", "1")
    assert code == 0, out


def test_secrets_are_encrypted_and_restored_with_the_key(site: dict, tmp_path: Path) -> None:
    env_file = site["config"].parent / ".env"
    env_file.write_text("JWT_SECRET_KEY=super-secret-value-0123456789abcdef\n")
    env_file.chmod(0o600)
    key_file = tmp_path / "backup.key"
    key_file.write_text(os.urandom(32).hex())

    code, error, out = cli(site, "backup", "create", "--no-server", "--include-secrets")
    assert code == 2 and "encryption key" in error["message"], out  # no key: refused, nothing written
    result = create(site, "--include-secrets", "--key-file", str(key_file))
    entry = entry_for(site, result["id"], "secrets/.env")
    assert entry["sha256"] is None and entry["encryption"]["alg"] == "AES-256-GCM"
    manifest = site["client"].get_object(Bucket=site["bucket"], Key=f"{site['prefix']}snapshots/{result['id']}.json")["Body"].read()
    stored = site["client"].get_object(Bucket=site["bucket"], Key=object_key(site, entry))["Body"].read()
    assert b"super-secret" not in manifest and b"super-secret" not in stored
    assert "super-secret" not in out

    code, restored, out = cli(site, "restore", "latest", "--key-file", str(key_file))
    assert code == 0, out
    review = Path(restored["review_folder"])
    assert (review / "secrets" / ".env").read_text() == env_file.read_text()
    assert oct((review / "secrets" / ".env").stat().st_mode & 0o777) == "0o600"

    env_file.write_text("JWT_SECRET_KEY=changed\n")
    code, restored, out = cli(site, "restore", "latest", "--key-file", str(key_file), "--apply-config")
    assert code == 0, out
    assert "super-secret" in env_file.read_text() and oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert list(env_file.parent.glob(".env.previous-*"))

    wrong = tmp_path / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    before = read_tree(site["data"])
    code, error, out = cli(site, "restore", "latest", "--key-file", str(wrong))
    assert code == 2 and "wrong encryption key" in error["message"], out
    assert read_tree(site["data"]) == before
