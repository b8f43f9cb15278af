"""Seeding the shared log from an existing single-node data folder (`flashfit-server catalog
publish`), against moto's S3 server: the command itself in a subprocess, replicas and a real
server following what it published, a racing writer, a crash halfway, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashfit_server import publish as publish_module
from flashfit_server.datastore import DataStore, NewItem
from flashfit_server.publish import PublishRefused, publish
from flashfit_server.replica import SYNC_LOG_KEY, Replica
from flashfit_server.sharedlog import LogUnreachable, Record, SharedLog, SyncError, SyncTarget
from tests.integration.ops.test_backup_helpers import CREDENTIALS, free_port
from tests.server.conftest import image_bytes
from tests.server.integration.conftest import start_server
from tests.server.integration.sync_helpers import DIMS, new_bucket, new_item, replica, same_catalogue, server_env

pytestmark = pytest.mark.integration

TINY_DIMS = {"clip": 32, "blip": 32, "fashion": 24}  # what flashfit_server.models.tiny makes


def single_node_folder(folder: Path, count: int, dims: dict[str, int] = DIMS) -> DataStore:
    """A folder that has only ever been a single node's: `count` items added, the last one deleted."""
    store = DataStore(folder, compact_in_background=False)
    store.open(dims, background=False)
    rng = np.random.default_rng(count)
    for first in range(0, count, 4):
        store.add_items([
            NewItem(image_bytes(seed), "png", {n: rng.standard_normal(d).astype(np.float32) for n, d in dims.items()},
                    name=f"old {seed}", caption=f"caption {seed}", tags=["kept"], category="top")
            for seed in range(first, min(count, first + 4))
        ])
    store.delete_item(count)  # its id must never be handed out again
    return store


def shared_log(endpoint: str, bucket: str) -> SharedLog:
    return SharedLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1"))


def run_publish(folder: Path, url: str, endpoint: str | None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flashfit_server.cli", "catalog", "publish", "--data-dir", str(folder),
               "--sync-url", url]
    if endpoint:
        command += ["--endpoint", endpoint]
    return subprocess.run(command, env={**os.environ, **CREDENTIALS}, capture_output=True, text=True, timeout=120)


def test_an_existing_folder_is_published_and_every_new_node_serves_it_with_the_same_ids(
        tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    source = single_node_folder(tmp_path / "source", 9)
    source.close()
    done = run_publish(tmp_path / "source", f"s3://{bucket}/shop", moto_endpoint)
    assert done.returncode == 0, done.stderr
    assert "published 8 items" in done.stdout and "Traceback" not in done.stderr

    late = replica(tmp_path / "late", moto_endpoint, bucket)
    late.catch_up()
    assert late.applied_seq == 1 and late.problem is None
    origin = replica(tmp_path / "source", moto_endpoint, bucket)  # the published folder now follows the log
    origin.sync_once()
    assert origin.applied_seq == 1 and origin.store.db.meta(SYNC_LOG_KEY) == f"s3://{bucket}/shop"
    same_catalogue(origin.store, late.store)
    assert late.store.db.all_ids() == set(range(1, 9))

    # The deleted id 9 is not handed out again, by either node.
    new_ids = [i.id for i in late.add_items([new_item(50)])]
    assert new_ids == [10]
    origin.apply_new()
    assert origin.store.db.get(10).name == "item 50"

    again = run_publish(tmp_path / "source", f"s3://{bucket}/shop", moto_endpoint)  # a rerun: nothing to do
    assert again.returncode == 0 and "already follows" in again.stdout, again.stderr
    assert shared_log(moto_endpoint, bucket).list_after(0) == [1, 2]


def test_a_log_that_is_not_empty_is_refused_with_its_head_named(tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writer = replica(tmp_path / "writer", moto_endpoint, bucket)
    writer.catch_up()
    writer.add_items([new_item(1)])
    writer.add_items([new_item(2)])
    single_node_folder(tmp_path / "source", 5).close()
    done = run_publish(tmp_path / "source", f"s3://{bucket}/shop", moto_endpoint)
    assert done.returncode == 4, done.stderr
    assert "is not empty (head: log record 2)" in done.stderr and "Traceback" not in done.stderr
    check = DataStore(tmp_path / "source", compact_in_background=False)
    check.open(DIMS, background=False)
    assert check.db.meta(SYNC_LOG_KEY) is None  # not marked: it still refuses to follow that log
    with pytest.raises(SyncError, match="holds 4 items that are not in the shared log"):
        Replica(check, shared_log(moto_endpoint, bucket)).sync_once()


class _RacedLog(SharedLog):
    """The real log; just before publish creates seq 1, another node's writer commits seq 1."""

    def __init__(self, target: SyncTarget, other: Replica):
        super().__init__(target)
        self.other = other

    def append(self, record: Record) -> bool:
        if record.op == "import":
            self.other.add_items([new_item(99)])
        return super().append(record)


def test_a_writer_that_takes_seq_1_first_stops_the_publish_and_nothing_interleaves(
        tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    other = replica(tmp_path / "other", moto_endpoint, bucket)
    other.catch_up()
    source = single_node_folder(tmp_path / "source", 5)
    raced = _RacedLog(SyncTarget(f"s3://{bucket}/shop", moto_endpoint, "us-east-1"), other)
    with pytest.raises(PublishRefused, match="another writer created log record 1"):
        publish(source, raced)
    assert source.db.meta(SYNC_LOG_KEY) is None
    log = shared_log(moto_endpoint, bucket)
    assert log.list_after(0) == [1] and log.get_record(1).op == "add" and log.list_checkpoints() == []
    late = replica(tmp_path / "late", moto_endpoint, bucket)
    late.catch_up()
    assert {i.name for i in late.store.db.fetch(late.store.db.all_ids(), 2**62).values()} == {"item 99"}


class _CrashingLog(SharedLog):
    """Uploads fail (a lost connection) after `budget` part blobs."""

    def __init__(self, target: SyncTarget, budget: int):
        super().__init__(target)
        self.budget = budget
        self.uploaded: list[str] = []

    def put_blob(self, kind: str, data: bytes):  # noqa: ANN201
        if kind == "parts":
            if self.budget == 0:
                raise LogUnreachable("connection lost (test)")
            self.budget -= 1
        self.uploaded.append(kind)
        return super().put_blob(kind, data)


def test_a_publish_that_crashed_halfway_is_run_again_and_skips_what_it_uploaded(
        tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish_module, "PART_ITEMS", 3)
    bucket = new_bucket(moto_endpoint)
    source = single_node_folder(tmp_path / "source", 10)  # 9 items: 3 parts
    target = SyncTarget(f"s3://{bucket}/shop", moto_endpoint, "us-east-1")
    crashing = _CrashingLog(target, budget=1)
    with pytest.raises(LogUnreachable):
        publish(source, crashing)
    assert source.db.meta(SYNC_LOG_KEY) is None and shared_log(moto_endpoint, bucket).list_after(0) == []
    assert crashing.uploaded.count("images") == 6

    rerun = _CrashingLog(target, budget=10)
    done = publish(source, rerun)
    assert (done.items, done.parts) == (9, 3)
    assert rerun.uploaded.count("images") == 3 and rerun.uploaded.count("parts") == 2  # the first part was there
    late = replica(tmp_path / "late", moto_endpoint, bucket)
    late.catch_up()
    same_catalogue(source, late.store)


def test_a_published_folder_is_served_by_a_real_server_and_a_new_node_serves_the_same(
        tmp_path: Path, moto_endpoint: str, tiny_models: Path) -> None:
    import httpx

    bucket = new_bucket(moto_endpoint)
    single_node_folder(tmp_path / "a" / "data", 5, TINY_DIMS).close()
    assert run_publish(tmp_path / "a" / "data", f"s3://{bucket}/shop", moto_endpoint).returncode == 0
    servers = [start_server(tmp_path / name, tiny_models, env=server_env(moto_endpoint, bucket)) for name in "ab"]
    try:
        for server in servers:
            page = httpx.get(server.url + "/api/items", params={"limit": 100}, timeout=30).json()
            assert sorted(i["id"] for i in page["items"]) == [1, 2, 3, 4]
            assert httpx.get(server.url + "/api/items/3/image", timeout=30).content == image_bytes(2)
            recommend = httpx.post(server.url + "/api/fusion/recommend", json={"item_id": 2, "limit": 3}, timeout=30)
            assert recommend.status_code == 200, recommend.text
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize(
    ("make", "url", "endpoint", "code", "message"),
    [
        ("good", "https://bucket/x", None, 2, "--sync-url: must look like s3://bucket/prefix"),
        ("good", "s3://Bad_Bucket/x", None, 2, "is not a valid S3 bucket name"),
        ("missing", "s3://bucket/x", None, 2, "holds no data folder"),
        ("garbage", "s3://bucket/x", None, 2, "--data-dir:"),
        ("good", "s3://bucket/x", "ftp://host", 2, "--endpoint must be an http(s):// URL"),
        ("good", "s3://bucket/x", "unreachable", 1, "cannot list the shared log"),
    ],
)
def test_bad_input_is_named_with_its_exit_code_and_no_traceback(
        tmp_path: Path, make: str, url: str, endpoint: str | None, code: int, message: str) -> None:
    folder = tmp_path / "data"
    if make == "good":
        single_node_folder(folder, 3).close()
    elif make == "garbage":
        folder.mkdir()
        (folder / "manifest.json").write_text("{not json")
    if endpoint == "unreachable":
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_publish(folder, url, endpoint)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


class _DiesAfterAppend(SharedLog):
    """Record 1 lands in the bucket, then the connection drops before the folder is marked."""

    def append(self, record: Record) -> bool:
        super().append(record)
        raise LogUnreachable("connection lost after the write (test)")


def test_a_publish_that_died_after_creating_record_1_is_completed_by_a_rerun(
        tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    source = single_node_folder(tmp_path / "source", 6)
    target = SyncTarget(f"s3://{bucket}/shop", moto_endpoint, "us-east-1")
    with pytest.raises(LogUnreachable):
        publish(source, _DiesAfterAppend(target))
    assert source.db.meta(SYNC_LOG_KEY) is None and shared_log(moto_endpoint, bucket).list_after(0) == [1]
    source.close()
    done = run_publish(tmp_path / "source", f"s3://{bucket}/shop", moto_endpoint)
    assert done.returncode == 0 and "is this folder's own import" in done.stdout, done.stderr
    origin = replica(tmp_path / "source", moto_endpoint, bucket)
    origin.sync_once()
    assert origin.applied_seq == 1 and origin.store.db.count() == 5
    # Another folder is not mistaken for the one that was published.
    single_node_folder(tmp_path / "other", 4).close()
    other = run_publish(tmp_path / "other", f"s3://{bucket}/shop", moto_endpoint)
    assert other.returncode == 4 and "is not empty (head: log record 1)" in other.stderr


class _FolderWrittenMeanwhile(SharedLog):
    """While the parts upload, the folder's own server (still running) takes one more add."""

    def __init__(self, target: SyncTarget, store: DataStore):
        super().__init__(target)
        self.store = store

    def put_blob(self, kind: str, data: bytes):  # noqa: ANN201
        if kind == "parts" and self.store.db.count() == 4:
            self.store.add_items([new_item(77)])
        return super().put_blob(kind, data)


def test_a_folder_written_while_it_is_published_is_not_marked_and_the_log_stays_empty(
        tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    source = single_node_folder(tmp_path / "source", 5, DIMS)
    target = SyncTarget(f"s3://{bucket}/shop", moto_endpoint, "us-east-1")
    with pytest.raises(SyncError, match="changed while it was being published"):
        publish(source, _FolderWrittenMeanwhile(target, source))
    assert source.db.meta(SYNC_LOG_KEY) is None and shared_log(moto_endpoint, bucket).list_after(0) == []
    assert publish(source, shared_log(moto_endpoint, bucket)).items == 5  # run again, with the server stopped
