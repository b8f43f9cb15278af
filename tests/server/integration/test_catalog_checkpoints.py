"""Checkpoints of the shared catalogue log against moto's S3 server: written every K commits, a
late joiner loads the newest valid one and replays only what follows; a damaged or mismatching
one is refused by name and the joiner falls back (older checkpoint, or the whole log), never
left with part of a refused checkpoint. Then the same through real servers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from flashfit_server import checkpoints
from flashfit_server.replica import Replica
from flashfit_server.sharedlog import Record, SharedLog, SyncTarget
from tests.integration.ops.test_backup_helpers import s3_client
from tests.server.conftest import image_bytes
from tests.server.integration.conftest import start_server
from tests.server.integration.sync_helpers import new_bucket, new_item, replica, same_catalogue, server_env, wait_for

pytestmark = pytest.mark.integration


class CountingLog(SharedLog):
    """The real log, counting which records a node reads."""

    def __init__(self, target: SyncTarget):
        super().__init__(target)
        self.read: list[int] = []

    def get_record(self, seq: int) -> Record:
        self.read.append(seq)
        return super().get_record(seq)


def _history(tmp_path: Path, endpoint: str, bucket: str) -> Replica:
    """12 commits by a writer that checkpoints every 5 (checkpoints 5 and 10): adds, two deletes."""
    writer = replica(tmp_path / "writer", endpoint, bucket, checkpoint_every=5)
    writer.catch_up()
    for seed in range(1, 11):
        writer.add_items([new_item(seed), new_item(100 + seed)] if seed % 3 == 0 else [new_item(seed)])
        if seed in (3, 7):
            writer.delete_item(2)  if seed == 3 else writer.delete_item(6)
    assert writer.applied_seq == 12
    return writer


def _joiner(tmp_path: Path, endpoint: str, bucket: str, name: str, **options: object) -> tuple[Replica, CountingLog]:
    counting = CountingLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1"))
    joiner = replica(tmp_path / name, endpoint, bucket, shared=counting, **options)
    joiner.sync_once()
    return joiner, counting


def test_a_writer_checkpoints_every_k_commits_and_a_joiner_replays_only_what_follows(
        tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writer = _history(tmp_path, moto_endpoint, bucket)
    assert writer.shared.list_checkpoints() == [5, 10] and writer.checkpoint_written == 10
    assert writer.shared.get_checkpoint(10).next_id == 11  # ids 1..10 handed out by commit 10

    joiner, counting = _joiner(tmp_path, moto_endpoint, bucket, "joiner")
    assert joiner.checkpoint_loaded == 10 and joiner.applied_seq == 12
    assert sorted(counting.read) == [11, 12]
    full, full_log = _joiner(tmp_path, moto_endpoint, bucket, "full", load_checkpoints=False)
    assert sorted(full_log.read) == list(range(1, 13)) and full.checkpoint_loaded is None
    same_catalogue(full.store, joiner.store)
    same_catalogue(writer.store, joiner.store)
    assert 2 not in joiner.store.db.all_ids() and 6 not in joiner.store.db.all_ids()
    # The joiner writes on: fresh ids after the checkpoint's next_id, seen by the writer.
    new_id = joiner.add_items([new_item(500)])[0].id
    assert new_id == writer.store.db.next_id()
    writer.apply_new()
    assert writer.store.db.get(new_id).name == "item 500"
    assert not (joiner.store.folder / ".checkpoint-staging").exists()


def test_a_checkpoint_reuses_the_parts_no_delete_touched_and_repacks_the_rest(
        tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "PART_ITEMS", 2)
    bucket = new_bucket(moto_endpoint)
    writer = _history(tmp_path, moto_endpoint, bucket)
    writer.delete_item(3)  # commit 13
    writer.add_items([new_item(11)])
    writer.add_items([new_item(12)])  # commit 15: a checkpoint
    shared = writer.shared
    ten, fifteen = shared.get_checkpoint(10), shared.get_checkpoint(15)
    parts_of_ten = dict(zip(ten.parts, checkpoints.fetch_parts(shared, ten.parts), strict=True))
    touched = next(ref for ref, part in parts_of_ten.items() if 3 in part.ids)
    assert touched not in fifteen.parts
    assert set(ten.parts) - {touched} <= set(fifteen.parts)  # every untouched full part is reused
    joiner, counting = _joiner(tmp_path, moto_endpoint, bucket, "joiner")
    assert joiner.checkpoint_loaded == 15 and counting.read == []
    same_catalogue(writer.store, joiner.store)


def _damage(s3, bucket: str, how: str) -> str:  # noqa: ANN001
    """Damage checkpoint 10 (or add a bogus one); the reason the joiner must name."""
    key = "shop/checkpoints/000000000010.json"
    body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if how == "count":
        body["items"] += 1
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
        return "checkpoint 10 refused: checkpoint 10: its parts hold"
    if how == "ahead":
        s3.put_object(Bucket=bucket, Key="shop/checkpoints/000000000099.json", Body=json.dumps({**body, "seq": 99}).encode())
        return "checkpoint 99 refused: checkpoint 99 is ahead of the log (head: log record 12)"
    part = json.loads(s3.get_object(Bucket=bucket, Key=f"shop/parts/{body['parts'][-1]['sha256']}")["Body"].read())
    if how == "missing-part":
        s3.delete_object(Bucket=bucket, Key=f"shop/parts/{body['parts'][-1]['sha256']}")
        return f"parts/{body['parts'][-1]['sha256']} is missing from the bucket"
    if how == "next-id":
        body["next_id"] = 3
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
        return "is not below its next_id 3"
    segment = f"shop/segments/{part['segments']['blip']['sha256']}"  # the checkpoint's own, repacked segment
    data = bytearray(s3.get_object(Bucket=bucket, Key=segment)["Body"].read())
    data[-1] ^= 0x01
    s3.put_object(Bucket=bucket, Key=segment, Body=bytes(data))
    return f"{segment.removeprefix('shop/')} does not match its sha256"


@pytest.mark.parametrize("how", ["count", "ahead", "missing-part", "next-id", "segment"])
def test_a_damaged_newest_checkpoint_is_refused_by_name_and_the_joiner_falls_back(
        tmp_path: Path, moto_endpoint: str, how: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writer = _history(tmp_path, moto_endpoint, bucket)
    reason = _damage(s3_client(moto_endpoint), bucket, how)
    joiner, counting = _joiner(tmp_path, moto_endpoint, bucket, "joiner")
    assert any(reason in r for r in joiner.checkpoints_refused), joiner.checkpoints_refused
    if how == "segment":  # checkpoint 5 shares no segment with 10 here: it is used
        assert joiner.checkpoint_loaded == 5 and sorted(counting.read) == list(range(6, 13))
    else:
        assert joiner.checkpoint_loaded in (5, 10 if how == "ahead" else 5)
    assert joiner.applied_seq == 12 and joiner.problem is None
    same_catalogue(writer.store, joiner.store)


def test_with_every_checkpoint_refused_the_joiner_replays_the_whole_log(tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writer = _history(tmp_path, moto_endpoint, bucket)
    s3 = s3_client(moto_endpoint)
    for seq in (5, 10):
        s3.put_object(Bucket=bucket, Key=f"shop/checkpoints/{seq:012d}.json", Body=b'{"format": "flashfit-checkpoint/1"')
    joiner, counting = _joiner(tmp_path, moto_endpoint, bucket, "joiner")
    assert [r.split(":")[0] for r in joiner.checkpoints_refused] == ["checkpoint 10 refused", "checkpoint 5 refused"]
    assert "is not valid JSON" in joiner.checkpoints_refused[0]
    assert joiner.checkpoint_loaded is None and sorted(counting.read) == list(range(1, 13))
    same_catalogue(writer.store, joiner.store)


def test_a_late_server_loads_the_checkpoint_its_peers_wrote_before_it_is_ready(
        tmp_path: Path, moto_endpoint: str, tiny_models: Path) -> None:
    bucket = new_bucket(moto_endpoint)
    env = {**server_env(moto_endpoint, bucket), "CATALOG_SYNC_CHECKPOINT_EVERY": "3"}
    first = start_server(tmp_path / "first", tiny_models, env=env)
    late = None
    try:
        shared = SharedLog(SyncTarget(f"s3://{bucket}/shop", moto_endpoint, "us-east-1"))
        ids: list[int] = []
        for seeds, least in ((range(3), 3), (range(3, 7), 6)):  # the follower thread writes each soon after
            with first.client() as client:
                for seed in seeds:
                    response = client.post("/api/items", data={"name": f"item {seed}"}, headers=first.auth,
                                           files={"image": (f"{seed}.png", image_bytes(seed), "image/png")})
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
            wait_for(lambda n=least: max(shared.list_checkpoints(), default=0) >= n, f"a checkpoint at {least} or later")
        newest = max(shared.list_checkpoints())
        late = start_server(tmp_path / "late", tiny_models, env=env)  # waits for /ready
        health = httpx.get(late.url + "/health", timeout=30).json()["catalog_sync"]
        assert health["checkpoint_loaded"] == newest and health["applied_seq"] == 7
        page = httpx.get(late.url + "/api/items", params={"limit": 100}, timeout=30).json()
        assert sorted(i["id"] for i in page["items"]) == sorted(ids)
        assert httpx.get(f"{late.url}/api/items/{ids[4]}/image", timeout=30).content == image_bytes(4)
    finally:
        first.stop()
        if late is not None:
            late.stop()
