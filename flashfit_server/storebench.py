"""Search latency and throughput of vector stores (`flashfit-server bench-store`, benchmarks)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from flashfit_server.vector_store import VectorStore


@dataclass(frozen=True)
class SearchTiming:
    store: str
    size: int
    kind: str
    p50_ms: float
    p95_ms: float
    qps_single: float  # one query per call
    qps_batched: float  # queries sent 64 at a time

    def line(self) -> str:
        return (
            f"{self.store:8s} {self.kind:5s} n={self.size:<8d} p50={self.p50_ms:7.3f} ms  "
            f"p95={self.p95_ms:7.3f} ms  qps(single)={self.qps_single:8.1f}  qps(batch 64)={self.qps_batched:9.1f}"
        )


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q)) if samples else 0.0


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_unit_vectors(n: int, dim: int, seed: int = 0, clusters: int = 256) -> np.ndarray:
    """Embedding-like data: points around a few hundred directions. (Uniform random vectors in
    high dimension are the worst case for graph indexes and unlike any real catalogue.)"""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def time_store(store: VectorStore, queries: int = 200, k: int = 10, seed: int = 1) -> SearchTiming:
    probes = random_unit_vectors(queries, store.dim, seed)
    store.search(probes[0], k)  # warm caches
    samples = []
    for probe in probes:
        started = time.perf_counter()
        store.search(probe, k)
        samples.append(time.perf_counter() - started)
    batch = 64
    started = time.perf_counter()
    for first in range(0, queries, batch):
        store.search(probes[first : first + batch], k)
    batched_seconds = time.perf_counter() - started
    return SearchTiming(
        store=store.name, size=len(store), kind=store.kind,
        p50_ms=percentile_ms(samples, 50), p95_ms=percentile_ms(samples, 95),
        qps_single=queries / max(sum(samples), 1e-9), qps_batched=queries / max(batched_seconds, 1e-9),
    )
