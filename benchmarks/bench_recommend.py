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

Per device (--device cpu|cuda|both; the default is both when torch sees CUDA, else cpu), the
models run as the server runs them there (CUDA: fp16 where the tolerance check of
flashfit_server/models/precision.py keeps it, batches of MAX_BATCH_SIZE_CUDA), side by side in one
run, and the fp16-vs-fp32 score drift of every model is measured on bench images with the same
function the server runs at load (goal: <= FP16_SCORE_TOLERANCE).

  .venv/bin/python benchmarks/bench_recommend.py            # tiny + full, 1k/10k/100k
  .venv/bin/python benchmarks/bench_recommend.py --quick    # tiny + full, 1k/10k, fewer runs
  .venv/bin/python benchmarks/bench_recommend.py --models tiny
  .venv/bin/python benchmarks/bench_recommend.py --models full --device both   # a GPU host
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
from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder  # noqa: E402
from flashfit_server.models.precision import FP16_SCORE_TOLERANCE, score_drift  # noqa: E402
from flashfit_server.models.registry import ModelNames, ModelRegistry  # noqa: E402
from flashfit_server.models.tiny import DEFAULT_BLIP, DEFAULT_CLIP, DEFAULT_FASHION, make_checkpoints  # noqa: E402
from flashfit_server.schemas import RecommendRequest  # noqa: E402
from flashfit_server.service import Service, embed_catalogue_sync  # noqa: E402
from flashfit_server.settings import Settings  # noqa: E402
from flashfit_server.storebench import clustered_unit_vectors, percentile_ms  # noqa: E402
from flashfit_server.vector_store import configure_faiss  # noqa: E402

CACHE = REPO / ".cache" / "bench-models"
NAMES = ModelNames(DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION)
BATCH = {"cpu": 16, "cuda": 64}  # MAX_BATCH_SIZE and MAX_BATCH_SIZE_CUDA as the benchmark sets them


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


def bench_model_size(
    size: str, device: str, sizes: list[int], runs: int, threads: int, ingest_n: int, work: Path
) -> tuple[list[str], dict[str, float]]:
    print(f"\n== {size} models on {device} ==")
    root = checkpoints(size)
    batch = BATCH[device]
    settings = Settings(model_cache_dir=root, vector_store_dir=work / f"data-{size}-{device}", max_batch_size=batch,
                        torch_threads=threads, inference_timeout=600)
    registry = ModelRegistry(root, NAMES, max_batch_size=BATCH["cpu"], threads=threads, device=device,
                             max_batch_size_cuda=BATCH["cuda"])
    started = time.perf_counter()
    assert registry.load_all(), registry.slots
    info = registry.device_info()
    print(f"  loaded three slots in {time.perf_counter() - started:.1f}s on {info['name']}: precision "
          f"{info['precision']}, load-time fp16 drift {info['fp16_drift'] or '-'}")
    label = f"{size:5s} {device:4s}"
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
        measured = {"embed_p50": e50, "recommend_p50": r50, "recommend_p95": r95, "items": n}
        rows.append(
            f"{label} {n:>7d} | embed {e50:7.1f}/{e95:7.1f} | search(3) {s50:6.1f}/{s95:6.1f} "
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
        registry.queue.max_batch = batch  # the same queue, a different batch limit
        started = time.perf_counter()
        for first in range(0, len(images), batch):
            chunk = images[first : first + batch]
            embedded = embed_catalogue_sync(registry, chunk)
            target.add_items(
                [NewItem(payloads[first + i], "jpg", e.vectors, name=str(first + i), caption=e.caption)
                 for i, e in enumerate(embedded)]
            )
        return time.perf_counter() - started

    one = ingest(1, work / f"ingest-one-{size}-{device}")
    batched = ingest(batch, work / f"ingest-batch-{size}-{device}")
    speedup = one / batched
    rows.append(
        f"{label} ingest {ingest_n} images | one-at-a-time {ingest_n / one:6.1f} img/s | "
        f"batched({batch}) {ingest_n / batched:6.1f} img/s | speedup {speedup:4.2f}x {'ok' if speedup >= 2 else 'UNDER'}"
    )
    print("  " + rows[-1])
    rows.append(ingest_parts(label, registry, images[:8]))
    print("  " + rows[-1])
    registry.queue.close()
    loop.close()
    rows.append(fp16_drift(label, root, device, images[:16]))
    print("  " + rows[-1])
    measured["ingest_img_s"] = ingest_n / batched
    return rows, measured


def side_by_side(size: str, cpu: dict[str, float], cuda: dict[str, float]) -> str:
    """CPU time over CUDA time (or CUDA rate over CPU rate): how many times faster the GPU is."""
    return (
        f"{size:5s} cuda vs cpu at {int(cpu['items'])} items: embed p50 {cpu['embed_p50'] / cuda['embed_p50']:.1f}x | "
        f"recommend p50 {cpu['recommend_p50'] / cuda['recommend_p50']:.1f}x p95 {cpu['recommend_p95'] / cuda['recommend_p95']:.1f}x | "
        f"ingestion {cuda['ingest_img_s'] / cpu['ingest_img_s']:.1f}x"
    )


def fp16_drift(label: str, root: Path, device: str, images: list[Image.Image]) -> str:
    """How far half precision moves each model's scores on these images: fp32 and fp16 copies of
    the same weights on the same device, compared by models/precision.score_drift (the bound on
    any cosine score's change that the server's load-time check uses)."""
    texts = ["a red summer dress", "blue jeans", "a black leather jacket", "white shoes"]
    cells = []
    for slot, load in (
        ("clip", lambda: ClipEncoder.load(root, DEFAULT_CLIP, device)),
        ("blip", lambda: BlipCaptioner.load(root, DEFAULT_BLIP, 20, device)),
        ("fashion", lambda: ClipEncoder.load(root, DEFAULT_FASHION, device)),
    ):
        model = load()
        measure = (lambda m: np.concatenate([m.embed_images(images), m.embed_texts(texts)])) if slot != "blip" else (
            lambda m: m.probe(images))
        reference = measure(model)
        model.set_precision("fp16")
        drift = score_drift(reference, measure(model))
        cells.append(f"{slot} {drift:.5f}")
        del model
    worst = max(float(c.split()[1]) for c in cells)
    verdict = "ok" if worst <= FP16_SCORE_TOLERANCE else "OVER (the server keeps fp32 for such a model)"
    return f"{label} fp16 vs fp32 max score drift: " + " | ".join(cells) + f" | tolerance {FP16_SCORE_TOLERANCE} {verdict}"


def ingest_parts(label: str, registry: ModelRegistry, images: list[Image.Image]) -> str:
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
    return f"{label} ingest ms per image, alone/batched({len(images)}): " + " | ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k and 10k items, fewer repetitions")
    parser.add_argument("--models", choices=["tiny", "full", "both"], default="both")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default=None,
                        help="default: both when torch sees CUDA, else cpu")
    parser.add_argument("--sizes", default="", help="catalogue sizes, comma separated (overrides --quick's)")
    parser.add_argument("--ingest", type=int, default=0, help="images to ingest (default: by model size)")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    device = args.device or ("both" if cuda else "cpu")
    if device in ("cuda", "both") and not cuda:
        parser.error("--device cuda: torch sees no CUDA device here")
    devices = ["cpu", "cuda"] if device == "both" else [device]
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
    runs = args.runs or (15 if args.quick else 40)
    configure_faiss(args.threads)
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"cpus={os.cpu_count()} threads={args.threads} gpu={gpu} devices={devices} faiss_blas_threshold=4 "
          f"sizes={sizes} runs={runs} torch={torch.__version__}")
    print("latencies in ms, p50/p95; ratio = recommend p95 / (embed p95 + search p95)")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-recommend-") as tmp:
        for size in (["tiny", "full"] if args.models == "both" else [args.models]):
            measured = {}
            for on in devices:  # side by side: the same models, catalogue and images on each device
                ingest_n = args.ingest or (64 if size == "tiny" else (8 if args.quick else 16) * (8 if on == "cuda" else 1))
                found, measured[on] = bench_model_size(size, on, sizes, runs, args.threads, ingest_n, Path(tmp))
                rows += found
            if len(measured) == 2:
                rows.append(side_by_side(size, measured["cpu"], measured["cuda"]))
    print("\n== summary ==")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
