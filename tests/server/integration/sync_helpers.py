"""Helpers for the shared-catalogue tests (no tests here): moto's S3 server in its own process,
replicas over data folders with made-up vectors (no models), and the env a server needs."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flashfit_server.datastore import DataStore, NewItem
from flashfit_server.replica import Replica
from flashfit_server.sharedlog import SharedLog, SyncTarget
from tests.integration.ops.test_backup_helpers import CREDENTIALS, s3_client

DIMS = {"clip": 8, "blip": 8, "fashion": 6}
_buckets = itertools.count()


def new_bucket(endpoint: str) -> str:
    name = f"catalog-{next(_buckets)}-{time.monotonic_ns() % 10**9}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def server_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {**CREDENTIALS, "CATALOG_SYNC_URL": f"s3://{bucket}/shop", "CATALOG_SYNC_ENDPOINT": endpoint,
            "CATALOG_SYNC_POLL_INTERVAL": "0.2"}


def replica(folder: Path, endpoint: str, bucket: str, conditional: bool = True, shared: SharedLog | None = None,
            **options: Any) -> Replica:
    store = DataStore(folder, compact_in_background=False)
    store.open(DIMS, background=False)
    shared = shared or SharedLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1"), conditional=conditional)
    return Replica(store, shared, poll_interval=0.05, **options)


def new_item(seed: int) -> NewItem:
    rng = np.random.default_rng(seed)
    vectors = {name: rng.standard_normal(dim).astype(np.float32) for name, dim in DIMS.items()}
    return NewItem(f"image-{seed}".encode(), "png", vectors, name=f"item {seed}", caption=f"caption {seed}")


def same_catalogue(a: DataStore, b: DataStore) -> None:
    """The same items (metadata, image bytes, vectors) under the same ids in both folders."""
    ids = a.db.all_ids()
    assert b.db.all_ids() == ids
    left, right = a.db.fetch(ids, 2**62), b.db.fetch(ids, 2**62)
    for item_id in ids:
        x, y = left[item_id], right[item_id]
        assert (x.name, x.caption, x.tags, x.category, x.created_at) == (y.name, y.caption, y.tags, y.category, y.created_at)
        assert a.image_path(x).read_bytes() == b.image_path(y).read_bytes()
    with a.read() as sa, b.read() as sb:
        for name in DIMS:
            order = sorted(ids)
            assert np.array_equal(sa.stores[name].vectors(order), sb.stores[name].vectors(order))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll until `check()` holds; the timeout only bounds a broken run, it is no speed goal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")
