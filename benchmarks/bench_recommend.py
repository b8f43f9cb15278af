"""Recommendation latency against the cost of its parts, and batched vs one-at-a-time ingestion.

For each model size (tiny checkpoints, and the full CLIP ViT-B/32 + BLIP-base architectures
with random weights, built from config: nothing is downloaded) and each catalogue size
(1k/10k/100k synthetic items inserted straight into the stores), it measures in one process:

  embed     query embedding alone: CLIP image + fashion image encoders, called directly
  search    the three store searches alone (one query each, run one after another)
  recommend the whole service path: base64 decode, batching queue, embedding, parallel
            searches, exact re-scoring of every candidate in all three spaces, fusion

and prints p50/p95 with the ratio recommend_p95 / (embed_p95 + search_p95) (goal <= 1.2), the
single flat search at 100k (goal < 20 ms), and ingestion throughput batched (MAX_BATCH_SIZE)
vs one image at a time, each committed to disk as the server does (goal >= 2x), with each
model's share of an ingested image alone and batched.

  .venv/bin/python benchmarks/bench_recommend.py            # tiny + full, 1k/10k/100k
  .venv/bin/python benchmarks/bench_recommend.py --quick    # tiny + full, 1k/10k, fewer runs
  .venv/bin/python benchmarks/bench_recommend.py --models tiny
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flashfit_server.catalog import Item  # noqa: E402
from flashfit_server.datastore import STORE_NAMES, DataStore, NewItem  # noqa: E402
from flashfit_server.models.registry import ModelNames, ModelRegistry  # noqa: E402
from flashfit_server.models.tiny import DEFAULT_BLIP, DEFAULT_CLIP, DEFAULT_FASHION, make_checkpoints  # noqa: E402
from flashfit_server.schemas import RecommendRequest  # noqa: E402
from flashfit_server.service import Service, embed_catalogue_sync  # noqa: E402
from flashfit_server.settings import Settings  # noqa: E402
from flashfit_server.storebench import clustered_unit_vectors, percentile_ms  # noqa: E402
from flashfit_server.vector_store import configure_faiss  # noqa: E402

CACHE = REPO / ".cache" / "bench-models"
NAMES = ModelNames(DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION)


def photo(seed: int, side: int = 256) -> Image.Image:
    """A smooth, photo-like image (noise would make JPEG and resizing unrealistically slow)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side] / side
    channels = [np.sin(xs * rng.uniform(2, 9) + ys * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def checkpoints(size: str) -> Path:
    root = CACHE / f"{size}-seed0"
    if not (root / DEFAULT_FASHION / "config.json").exists():
        started = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        make_checkpoints(root, seed=0, size=size)  # type: ignore[arg-type]
        print(f"  built {size} checkpoints in {time.perf_counter() - started:.1f}s -> {root}")
    return root


def timed(fn, runs: int) -> list[float]:  # noqa: ANN001
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def fill_catalogue(store: DataStore, target: int, dims: dict[str, int]) -> None:
    have = store.sizes()["clip"]
    missing = target - have
    if missing <= 0:
        return
    ids = np.arange(have + 1, have + 1 + missing, dtype=np.int64)
    vectors = {name: clustered_unit_vectors(missing, dims[name], seed=target + i) for i, name in enumerate(STORE_NAMES)}
    items = [Item(id=int(i), name=f"synthetic {i}", caption="synthetic") for i in ids]
    store.add_vectors_unchecked(ids, vectors, items)


def stats(samples: list[float]) -> tuple[float, float]:
    return percentile_ms(samples, 50), percentile_ms(samples, 95)


def bench_model_size(size: str, sizes: list[int], runs: int, threads: int, ingest_n: int, work: Path) -> list[str]:
    print(f"\n== {size} models ==")
    root = checkpoints(size)
    settings = Settings(model_cache_dir=root, vector_store_dir=work / f"data-{size}", max_batch_size=16,
                        torch_threads=threads, inference_timeout=600)
    registry = ModelRegistry(root, NAMES, max_batch_size=16, threads=threads)
    started = time.perf_counter()
    assert registry.load_all(), registry.slots
    print(f"  loaded three slots in {time.perf_counter() - started:.1f}s")
    dims = registry.dims()
    store = DataStore(settings.vector_store_dir, refresh_interval=3600)
    store.open(dims)
    service = Service(settings, registry, store)
    assert registry.clip is not None and registry.fashion is not None
    query_image = photo(12345)
    request = RecommendRequest(image_data=base64.b64encode(jpeg_bytes(query_image)).decode(), limit=10)
    loop = asyncio.new_event_loop()

    def embed() -> None:
        registry.clip.embed_images([query_image])  # type: ignore[union-attr]
        registry.fashion.embed_images([query_image])  # type: ignore[union-attr]

    queries = {
        "clip": registry.clip.embed_images([query_image])[0],
        "blip": registry.clip.embed_images([query_image])[0],
        "fashion": registry.fashion.embed_images([query_image])[0],
    }
    rows = []
    for _ in range(3):  # warm-up: first calls pay for lazy initialisation
        embed()
        loop.run_until_complete(service.recommend(request))
    for n in sizes:
        fill_catalogue(store, n, dims)
        loop.run_until_complete(service.recommend(request))
        with store.read() as state:
            stores = state.stores

        def search() -> None:
            for name in STORE_NAMES:
                stores[name].search(queries[name], 32)  # noqa: B023

        # Interleaved, so load from anything else on the host hits all three measures alike. All
        # inside one task, as in a live server: anyio keeps its worker threads per root task, and
        # a fresh run_until_complete per request would start a thread each time (~0.4 ms).
        embed_samples, search_samples, single_flat, recommend = [], [], [], []

        async def measure() -> None:
            for _ in range(runs):
                embed_samples.extend(timed(embed, 1))
                search_samples.extend(timed(search, 1))
                single_flat.extend(timed(lambda: stores["clip"].search(queries["clip"], 32), 1))  # noqa: B023
                started = time.perf_counter()
                await service.recommend(request)
                recommend.append(time.perf_counter() - started)

        loop.run_until_complete(measure())
        e50, e95 = stats(embed_samples)
        s50, s95 = stats(search_samples)
        r50, r95 = stats(recommend)
        f50, f95 = stats(single_flat)
        ratio = r95 / (e95 + s95)
        ratio50 = r50 / (e50 + s50)
        rows.append(
            f"{size:5s} {n:>7d} | embed {e50:7.1f}/{e95:7.1f} | search(3) {s50:6.1f}/{s95:6.1f} "
            f"| one flat {f50:5.1f}/{f95:5.1f} | recommend {r50:7.1f}/{r95:7.1f} | ratio p95 {ratio:4.2f} "
            f"p50 {ratio50:4.2f} {'ok' if ratio <= 1.2 else 'OVER'}"
        )
        print("  " + rows[-1])

    # Ingestion: the same images, one commit per image vs batches of MAX_BATCH_SIZE.
    images = [photo(i) for i in range(ingest_n)]
    payloads = [jpeg_bytes(im) for im in images]

    def ingest(batch: int, folder: Path) -> float:
        target = DataStore(folder, refresh_interval=3600)
        target.open(dims)
        registry.queue._max_batch = batch  # noqa: SLF001  (the same queue, a different batch limit)
        started = time.perf_counter()
        for first in range(0, len(images), batch):
            chunk = images[first : first + batch]
            embedded = embed_catalogue_sync(registry, chunk)
            target.add_items(
                [NewItem(payloads[first + i], "jpg", e.vectors, name=str(first + i), caption=e.caption)
                 for i, e in enumerate(embedded)]
            )
        return time.perf_counter() - started

    one = ingest(1, work / f"ingest-one-{size}")
    batched = ingest(16, work / f"ingest-batch-{size}")
    speedup = one / batched
    rows.append(
        f"{size:5s} ingest {ingest_n} images | one-at-a-time {ingest_n / one:6.1f} img/s | "
        f"batched(16) {ingest_n / batched:6.1f} img/s | speedup {speedup:4.2f}x {'ok' if speedup >= 2 else 'UNDER'}"
    )
    print("  " + rows[-1])
    rows.append(ingest_parts(size, registry, images[:8]))
    print("  " + rows[-1])
    registry.queue.close()
    loop.close()
    return rows


def ingest_parts(size: str, registry: ModelRegistry, images: list[Image.Image]) -> str:
    """Where an ingested image's time goes, per model, alone vs in one batch: a part that is
    compute-bound gains nothing from batching and caps the ingestion speedup."""
    assert registry.clip is not None and registry.fashion is not None and registry.blip is not None
    captions = registry.blip.caption(images)
    parts = {
        "clip": registry.clip.embed_images,
        "fashion": registry.fashion.embed_images,
        "caption": registry.blip.caption,
        "caption-text": lambda chunk: registry.clip.embed_texts(captions[: len(chunk)]),  # type: ignore[union-attr]
    }
    cells = []
    for name, run in parts.items():
        alone = sum(timed(lambda image=image: run([image]), 1)[0] for image in images)  # noqa: B023
        [together] = timed(lambda: run(images), 1)  # noqa: B023
        cells.append(f"{name} {alone / len(images) * 1000:.0f}/{together / len(images) * 1000:.0f}")
    return f"{size:5s} ingest ms per image, alone/batched({len(images)}): " + " | ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k and 10k items, fewer repetitions")
    parser.add_argument("--models", choices=["tiny", "full", "both"], default="both")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    runs = args.runs or (15 if args.quick else 40)
    configure_faiss(args.threads)
    print(f"cpus={os.cpu_count()} threads={args.threads} faiss_blas_threshold=4 sizes={sizes} runs={runs}")
    print("latencies in ms, p50/p95; ratio = recommend p95 / (embed p95 + search p95)")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-recommend-") as tmp:
        for size in (["tiny", "full"] if args.models == "both" else [args.models]):
            ingest_n = 64 if size == "tiny" else (8 if args.quick else 16)
            rows += bench_model_size(size, sizes, runs, args.threads, ingest_n, Path(tmp))
    print("\n== summary ==")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
