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
    ItemRecord,
    Record,
    SyncError,
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
