"""The shared catalogue log against moto's S3 server, one process, replicas on separate folders:
racing writers, the naive last-writer-wins put that loses a commit, tampered objects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashfit_server.atomic import set_fault_hook
from flashfit_server.replica import Replica
from flashfit_server.sharedlog import SyncError
from tests.integration.ops.test_backup_helpers import CREDENTIALS, s3_client, start_moto, stop
from tests.server.integration.sync_helpers import new_bucket, new_item, replica, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        proc, endpoint = start_moto()
        try:
            yield endpoint
        finally:
            stop(proc)


def _race(tmp_path: Path, endpoint: str, conditional: bool) -> tuple[Replica, Replica, Replica, int, list[int]]:
    """B has read the log and built its record for seq 1 when A commits seq 1; then B appends."""
    bucket = new_bucket(endpoint)
    a, b, c = (replica(tmp_path / name, endpoint, bucket, conditional) for name in "abc")
    for r in (a, b, c):
        r.catch_up()
    a_ids: list[int] = []
    armed = [True]

    def hook(step: str) -> None:
        if step == "sync-before-append" and armed[0] and threading.current_thread().name == "writer-b":
            armed[0] = False
            a_ids.extend(i.id for i in a.add_items([new_item(1)]))

    b_ids: list[int] = []
    set_fault_hook(hook)
    try:
        writer = threading.Thread(target=lambda: b_ids.extend(i.id for i in b.add_items([new_item(2), new_item(3)])),
                                  name="writer-b")
        writer.start()
        writer.join()
    finally:
        set_fault_hook(None)
    c.catch_up()
    return a, b, c, a_ids[0], b_ids


def test_a_writer_that_loses_the_race_for_a_seq_retries_and_no_commit_is_lost(tmp_path: Path, moto_endpoint: str) -> None:
    a, b, c, a_id, b_ids = _race(tmp_path, moto_endpoint, conditional=True)
    assert b.races_lost == 1
    assert a_id not in b_ids  # B took fresh ids after reading A's commit
    everything = {a_id, *b_ids}
    names = {item.name for item in c.store.db.fetch(everything, 2**62).values()}
    assert names == {"item 1", "item 2", "item 3"}
    for r in (b, c):
        r.apply_new()
        assert r.store.db.all_ids() == everything
        assert r.applied_seq == 2
    a.apply_new()
    assert a.store.db.all_ids() == everything


def test_a_naive_last_writer_wins_log_loses_an_acknowledged_item(tmp_path: Path, moto_endpoint: str) -> None:
    """The same race with the conditional write off: B overwrites A's record, A's item is lost."""
    a, b, c, a_id, b_ids = _race(tmp_path, moto_endpoint, conditional=False)
    assert b.races_lost == 0
    assert a.store.db.get(a_id).name == "item 1"  # acknowledged to A's client
    names = {item.name for item in c.store.db.fetch(c.store.db.all_ids(), 2**62).values()}
    assert names == {"item 2", "item 3"}  # yet no other node has it: B's record took its seq and its id
    assert a_id in b_ids


def test_many_concurrent_writers_on_several_folders_lose_nothing(tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writers = [replica(tmp_path / f"w{n}", moto_endpoint, bucket) for n in range(3)]
    for w in writers:
        w.catch_up()
    acknowledged: list[int] = []
    lock = threading.Lock()

    def write(w: Replica, base: int) -> None:
        for n in range(8):
            ids = [i.id for i in w.add_items([new_item(base + n)])]
            with lock:
                acknowledged.extend(ids)

    threads = [threading.Thread(target=write, args=(w, 100 * k)) for k, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acknowledged) == len(set(acknowledged)) == 24
    follower = replica(tmp_path / "late", moto_endpoint, bucket)
    follower.catch_up()
    assert follower.store.db.all_ids() == set(acknowledged)
    assert sum(w.races_lost for w in writers) >= 0  # how often they raced is up to the scheduler


def test_a_tampered_segment_is_refused_by_name_and_nothing_is_applied(tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    writer = replica(tmp_path / "w", moto_endpoint, bucket)
    writer.catch_up()
    writer.add_items([new_item(7)])
    record = writer.shared.get_record(1)
    sha = record.segments["fashion"].sha256
    s3 = s3_client(moto_endpoint)
    key = f"shop/segments/{sha}"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 0x01  # one bit of one vector
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    late = replica(tmp_path / "late", moto_endpoint, bucket)
    with pytest.raises(SyncError, match=f"segments/{sha} does not match its sha256"):
        late.apply_new()
    assert late.applied_seq == 0 and late.store.db.all_ids() == set()

    catching_up = threading.Thread(target=late.catch_up, daemon=True)
    catching_up.start()
    wait_for(lambda: late.problem is not None, "the late replica reports the tampered segment")
    assert late.refused and not late.caught_up and sha in (late.problem or "")
    late.close()
    catching_up.join(10)


def test_a_forged_record_is_refused_with_the_field_named(tmp_path: Path, moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    s3_client(moto_endpoint).put_object(
        Bucket=bucket, Key="shop/log/000000000001.json",
        Body=b'{"format": "flashfit-log/1", "seq": 1, "op": "add", "writer": "x", "dims": {}, "items": [], "segments": {}}')
    late = replica(tmp_path / "late", moto_endpoint, bucket)
    with pytest.raises(SyncError, match=r"log record 1\.dims must name exactly"):
        late.apply_new()
