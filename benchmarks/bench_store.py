"""Vector store search: latency and throughput per index kind and catalogue size.

For flat (exact inner product) and HNSW stores of d=512 synthetic unit vectors, prints single
query p50/p95, single-query and 64-query-batch QPS, HNSW recall@10 against flat, and the effect
of faiss' `distance_compute_blas_threshold` on 64-query batches (faiss-cpu 1.15's default,
128000, keeps every realistic batch off BLAS; the server lowers it to 4). Single queries on a
flat store of at least 4k x 512 floats are scanned by torch's matrix-vector product, not faiss.

  .venv/bin/python benchmarks/bench_store.py           # 1k, 10k, 100k
  .venv/bin/python benchmarks/bench_store.py --quick   # 1k, 10k
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashfit_server.storebench import clustered_unit_vectors, time_store  # noqa: E402
from flashfit_server.vector_store import FAISS_DEFAULT_BLAS_THRESHOLD, VectorStore, configure_faiss  # noqa: E402

DIM = 512


def recall_at_10(flat: VectorStore, approx: VectorStore, queries: np.ndarray) -> float:
    exact = flat.search(queries, 10)
    found = approx.search(queries, 10)
    return float(np.mean([len(set(e.ids) & set(f.ids)) / 10 for e, f in zip(exact, found, strict=True)]))


def batch_seconds(store: VectorStore, queries: np.ndarray, threshold: int) -> float:
    faiss.cvar.distance_compute_blas_threshold = threshold
    store.search(queries[:64], 10)
    started = time.perf_counter()
    for first in range(0, len(queries), 64):
        store.search(queries[first : first + 64], 10)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    configure_faiss(args.threads)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    print(f"d={DIM} threads={args.threads} queries={args.queries}")
    for n in sizes:
        # Queries drawn from the same distribution as the catalogue, as real queries are.
        data = clustered_unit_vectors(n + args.queries, DIM, seed=n)
        vectors, queries = data[:n], data[n:]
        ids = np.arange(1, n + 1, dtype=np.int64)
        stores = {}
        for kind in ("flat", "hnsw"):
            store = VectorStore("clip", DIM, kind)  # type: ignore[arg-type]
            started = time.perf_counter()
            store.add(ids, vectors)
            build = time.perf_counter() - started
            configure_faiss(args.threads)
            timing = time_store(store, queries=args.queries, k=10)
            print(f"{timing.line()}  build={build:6.2f}s")
            stores[kind] = store
        print(f"{'':8s} hnsw recall@10 vs flat: {recall_at_10(stores['flat'], stores['hnsw'], queries):.3f}")
        default = batch_seconds(stores["flat"], queries, FAISS_DEFAULT_BLAS_THRESHOLD)
        lowered = batch_seconds(stores["flat"], queries, 4)
        print(f"{'':8s} flat 64-query batches: blas threshold {FAISS_DEFAULT_BLAS_THRESHOLD} -> {args.queries / default:8.1f} qps, "
              f"4 -> {args.queries / lowered:8.1f} qps ({default / lowered:.1f}x)")
        configure_faiss(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
