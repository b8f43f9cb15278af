"""Backup and restore throughput against a real S3 endpoint (moto in server mode over HTTP),
compared with a plain boto3 upload_file/download_file of the same bytes to the same endpoint in
the same run. Also: a second backup with nothing changed (zero blob bytes expected).

    .venv/bin/python benchmarks/bench_backup.py [--mb 224] [--files 4]

Prints figures and ratios (goal: backup and restore at >= 0.8x the plain transfer); asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.ops.test_backup_helpers import CREDENTIALS, s3_client, start_moto, stop  # noqa: E402


def make_index_set(folder: Path, total_mb: int, files: int) -> int:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_file = total_mb * 1024 * 1024 // files // 4
    total = 0
    for number in range(files):
        name = ("clip", "blip", "fashion", "extra")[number % 4] + f"-{number:010d}"
        data = rng.standard_normal(per_file).astype(np.float32)
        data.tofile(folder / f"{name}.index")
        (folder / f"{name.split('-')[0]}{number}.json").write_text(f'{{"index_file": "{name}.index"}}')
        total += data.nbytes
    (folder / "items.json").write_text('{"items": []}')
    return total


def mbps(size: int, seconds: float) -> float:
    return size / 1024 / 1024 / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=224)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)

    from flashfit_ops.backup.engine import create_backup, restore_backup
    from flashfit_ops.backup.service import NoServiceControl
    from flashfit_ops.backup.snapshot import NoSnapshot
    from flashfit_ops.backup.store import open_store
    from flashfit_ops.config.load import resolve

    proc, endpoint = start_moto()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        client = s3_client(endpoint)
        data = work / "data"
        size = make_index_set(data, args.mb, args.files)
        sources = sorted(p for p in data.iterdir() if p.is_file())
        print(f"index set: {len(sources)} files, {size / 1024 / 1024:.0f} MiB of float32 (+ json); "
              f"endpoint {endpoint} (moto server); {args.rounds} interleaved rounds, medians reported")

        def empty(bucket: str) -> None:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

        times: dict[str, list[float]] = {k: [] for k in ("plain_up", "plain_down", "backup", "second", "restore")}
        uploaded = second_uploaded = 0
        for round_number in range(args.rounds):
            # plain boto3, default TransferConfig, one file after another (what a script would do)
            client.create_bucket(Bucket=f"plain-{round_number}")
            started = time.perf_counter()
            for path in sources:
                client.upload_file(str(path), f"plain-{round_number}", path.name)
            times["plain_up"].append(time.perf_counter() - started)
            down = work / f"plain-down-{round_number}"
            down.mkdir()
            started = time.perf_counter()
            for path in sources:
                client.download_file(f"plain-{round_number}", path.name, str(down / path.name))
            times["plain_down"].append(time.perf_counter() - started)
            shutil.rmtree(down)
            empty(f"plain-{round_number}")

            # flashfit, a fresh target each round (so every blob is new)
            bucket = f"backups-{round_number}"
            client.create_bucket(Bucket=bucket)
            config = resolve({"volumes": {"data": "./data"}, "backup": {"target": f"s3://{bucket}/bench",
                              "s3": {"endpoint_url": endpoint, "region": "us-east-1"}}}, base_dir=work, environ={})
            store = open_store(config.backup.target, config)
            started = time.perf_counter()
            first = create_backup(config, store, snapshotter=NoSnapshot())
            times["backup"].append(time.perf_counter() - started)
            uploaded = first["uploaded_bytes"]
            started = time.perf_counter()
            second = create_backup(config, store, snapshotter=NoSnapshot())
            times["second"].append(time.perf_counter() - started)
            second_uploaded = second["uploaded_bytes"]
            restored = work / f"restored-{round_number}"
            started = time.perf_counter()
            restore_backup(config, store, first["id"], service=NoServiceControl(), data_dir=restored)
            times["restore"].append(time.perf_counter() - started)
            for path in sources:
                assert (restored / path.name).stat().st_size == path.stat().st_size
            shutil.rmtree(restored)
            shutil.rmtree(work / f"restore-{first['id']}", ignore_errors=True)
            empty(bucket)

        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"plain boto3 upload_file:     {med['plain_up']:6.2f} s  {mbps(size, med['plain_up']):7.1f} MiB/s")
        print(f"flashfit backup create:      {med['backup']:6.2f} s  {mbps(size, med['backup']):7.1f} MiB/s  "
              f"(sha256 + sample compression + upload; {uploaded / 1024 / 1024:.0f} MiB of blobs written)")
        print(f"  ratio backup / plain:      {med['plain_up'] / med['backup']:6.2f}   (goal >= 0.8)")
        print(f"plain boto3 download_file:   {med['plain_down']:6.2f} s  {mbps(size, med['plain_down']):7.1f} MiB/s")
        print(f"flashfit restore:            {med['restore']:6.2f} s  {mbps(size, med['restore']):7.1f} MiB/s  "
              f"(download + sha256 of every file + fsync + swap)")
        print(f"  ratio restore / plain:     {med['plain_down'] / med['restore']:6.2f}   (goal >= 0.8)")
        print(f"second backup, no change:    {med['second']:6.2f} s  {second_uploaded} blob bytes uploaded; "
              f"{med['second'] / med['backup']:.2f}x the first backup's time")
        print("per round (s): " + "; ".join(f"{k} " + ",".join(f"{x:.2f}" for x in v) for k, v in times.items()))
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
