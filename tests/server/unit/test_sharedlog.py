"""Commit records of the shared catalogue log are hostile input: each bad field is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flashfit_server import segments
from flashfit_server.replica import decode_segment
from flashfit_server.sharedlog import (
    SEGMENT_HEADER,
    BlobRef,
    Checkpoint,
    ItemRecord,
    Part,
    PartRef,
    Record,
    SyncError,
    parse_checkpoint,
    parse_part,
    parse_record,
    parse_sync_url,
)

DIMS = {"clip": 4, "blip": 4, "fashion": 3}
SHA = "ab" * 32


def _record(**change: object) -> dict:
    item = ItemRecord(id=7, name="shirt", caption="a shirt", created_at="2026-01-01T00:00:00+00:00",
                      image=BlobRef(SHA, 10), image_extension="png")
    segs = {n: BlobRef(SHA, SEGMENT_HEADER + 8 + 4 * d) for n, d in DIMS.items()}
    body = Record(3, "add", "node-1/7", dims=DIMS, items=(item,), segments=segs).to_json()
    body.update(change)
    return body


def test_a_good_record_round_trips() -> None:
    record = parse_record(json.dumps(_record()).encode(), 3)
    assert record.ids == [7] and record.items[0].name == "shirt" and record.segments["fashion"].size == 84
    assert parse_record(Record(4, "delete", "w", deleted=7).encode(), 4).ids == [7]
    assert SEGMENT_HEADER == segments.HEADER


@pytest.mark.parametrize(
    ("change", "seq", "message"),
    [
        ({}, 4, "log record 4 says it is seq 3"),
        ({"format": "other"}, 3, "format must be"),
        ({"op": "rename"}, 3, r"\.op must be 'add' or 'delete'"),
        ({"dims": {"clip": 4}}, 3, r"\.dims must name exactly"),
        ({"items": []}, 3, r"\.items must be a non-empty list"),
        ({"items": [{"id": 0}]}, 3, r"\.items\[0\]\.image_extension"),
        ({"segments": {n: {"sha256": "xyz", "size": 1} for n in DIMS}}, 3, r"\.segments\.clip must be"),
        ({"segments": {n: {"sha256": SHA, "size": 1 << 30} for n in DIMS}}, 3, r"segments\.clip\.size does not fit"),
    ],
)
def test_a_bad_field_is_named(change: dict, seq: int, message: str) -> None:
    with pytest.raises(SyncError, match=message):
        parse_record(json.dumps(_record(**change)).encode(), seq)


def test_twice_the_same_id_and_bad_extensions_are_refused() -> None:
    item = _record()["items"][0]
    with pytest.raises(SyncError, match="lists an id twice"):
        parse_record(json.dumps(_record(items=[item, item])).encode(), 3)
    with pytest.raises(SyncError, match="image_extension"):
        parse_record(json.dumps(_record(items=[{**item, "image_extension": "../x"}])).encode(), 3)
    with pytest.raises(SyncError, match="not valid JSON"):
        parse_record(b"{", 3)


def test_a_segment_must_hold_exactly_the_ids_of_its_record() -> None:
    data = segments.encode(np.array([5, 6]), np.ones((2, 4), np.float32))
    assert decode_segment(data, [5, 6], 4, "s").shape == (2, 4)
    for ids, dim, message in (([5, 7], 4, "other item ids"), ([5], 4, "holds 2x4"), ([5, 6], 3, "holds 2x4")):
        with pytest.raises(SyncError, match=message):
            decode_segment(data, ids, dim, "s")
    with pytest.raises(SyncError, match="non-finite"):
        decode_segment(segments.encode(np.array([1]), np.full((1, 4), np.nan, np.float32)), [1], 4, "s")


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/a/b/", "s3://my.bucket-1/prefix"])
def test_sync_urls(url: str) -> None:
    bucket, prefix = parse_sync_url(url)
    assert bucket and not prefix.endswith("/")


# --- import records, parts and checkpoints: the same hostile input -----------------------------

PARTS = (PartRef("cd" * 32, 500, 2), PartRef("ef" * 32, 400, 1))


def _import(**change: object) -> dict:
    body = Record(1, "import", "publish", dims=DIMS, parts=PARTS, next_id=9).to_json()
    body.update(change)
    return body


def _checkpoint(**change: object) -> dict:
    body = json.loads(Checkpoint(40, "node-1/7", DIMS, PARTS, next_id=9).encode())
    body.update(change)
    return body


def test_good_imports_parts_and_checkpoints_round_trip() -> None:
    record = parse_record(json.dumps(_import()).encode(), 1)
    assert record.op == "import" and record.parts == PARTS and record.next_id == 9 and record.ids == []
    checkpoint = parse_checkpoint(json.dumps(_checkpoint()).encode(), 40)
    assert checkpoint.parts == PARTS and checkpoint.items == 3 and checkpoint.dims == DIMS
    body = _record()
    part = Part(DIMS, parse_record(json.dumps(body).encode(), 3).items,
                {n: BlobRef(SHA, SEGMENT_HEADER + 8 + 4 * d) for n, d in DIMS.items()})
    assert parse_part(part.encode(), PartRef(SHA, 1, 1)).ids == [7]


@pytest.mark.parametrize(
    ("change", "seq", "message"),
    [
        ({}, 2, "log record 2 says it is seq 1"),
        ({"seq": 2}, 2, r"log record 2: an import may only be log record 1"),
        ({"items": 4}, 1, "its parts hold 3 items, it says 4"),
        ({"parts": [PARTS[0].to_json(), PARTS[0].to_json()], "items": 4}, 1, "names a part twice"),
        ({"parts": [{"sha256": "cd" * 32, "size": 1 << 30, "items": 1}], "items": 1}, 1, r"parts\[0\]\.size is larger"),
        ({"parts": [{"sha256": "cd" * 32, "size": 10, "items": 0}], "items": 0}, 1, r"parts\[0\]\.items must be"),
        ({"parts": "all"}, 1, r"\.parts must be a list"),
        ({"next_id": 0}, 1, r"\.next_id must be an integer"),
        ({"dims": {"clip": 4}}, 1, r"\.dims must name exactly"),
    ],
)
def test_a_bad_import_field_is_named(change: dict, seq: int, message: str) -> None:
    with pytest.raises(SyncError, match=message):
        parse_record(json.dumps(_import(**change)).encode(), seq)


@pytest.mark.parametrize(
    ("change", "seq", "message"),
    [
        ({}, 41, "checkpoint 41 says it is seq 40"),
        ({"format": "flashfit-log/1"}, 40, "checkpoint 40: format must be 'flashfit-checkpoint/1'"),
        ({"items": 2}, 40, "checkpoint 40: its parts hold 3 items, it says 2"),
        ({"parts": [{"sha256": "../x", "size": 1, "items": 1}], "items": 1}, 40, r"checkpoint 40\.parts\[0\] must be"),
        ({"writer": 7}, 40, r"checkpoint 40\.writer must be text"),
        ({"dims": {**DIMS, "clip": 0}}, 40, r"checkpoint 40\.dims\.clip must be an integer"),
    ],
)
def test_a_bad_checkpoint_field_is_named(change: dict, seq: int, message: str) -> None:
    with pytest.raises(SyncError, match=message):
        parse_checkpoint(json.dumps(_checkpoint(**change)).encode(), seq)
    with pytest.raises(SyncError, match="is not valid JSON"):
        parse_checkpoint(b"\xff", seq)


def test_a_part_is_checked_like_an_add_record_and_against_its_reference() -> None:
    body = {k: v for k, v in _record().items() if k in ("dims", "items", "segments")}
    good = json.dumps({"format": "flashfit-part/1", **body}).encode()
    with pytest.raises(SyncError, match=f"parts/{'cd' * 32} holds 1 items, its reference says 2"):
        parse_part(good, PARTS[0])
    with pytest.raises(SyncError, match=r"format must be 'flashfit-part/1'"):
        parse_part(json.dumps({"format": "flashfit-log/1", **body}).encode(), PARTS[1])
    with pytest.raises(SyncError, match=r"segments\.clip\.size does not fit"):
        parse_part(json.dumps({"format": "flashfit-part/1", **body, "segments": {n: {"sha256": SHA, "size": 1} for n in DIMS}}).encode(), PARTS[1])
