"""Prometheus metrics, named only from flashfit_contract.metrics.

Each app gets its own registry (no process/platform collectors, no `_created` series), so the
exposition holds exactly flashfit_contract.metrics.EXPOSED_SERIES. With several workers,
PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported (`flashfit-server
serve --workers N` does it): counters and histograms are then summed across workers from their
files. Store sizes are read live from this worker at scrape time (all workers see the same data
within a second), so they need no shared state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashfit_contract import metrics as names

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MODEL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

disable_created_metrics()


class _StoreSizes(Collector):
    def __init__(self, sizes: Callable[[], dict[str, int]]):
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(names.VECTOR_STORE_SIZE, "Vectors held by each store", labels=["store"])
        for store, size in sorted(self._sizes().items()):
            gauge.add_metric([store], size)
        yield gauge


class _Device(Collector):
    """The inference device and this worker's GPU memory, read live at scrape time."""

    def __init__(self, info: Callable[[], dict[str, Any]]):
        self._info = info

    def collect(self) -> Iterator[Metric]:
        info = self._info()
        device = GaugeMetricFamily(
            names.INFERENCE_DEVICE_INFO, "Device the models run on", labels=["device", "precision"]
        )
        device.add_metric([info.get("type") or "pending", info.get("precision", {}).get("clip", "pending")], 1)
        yield device
        memory = info.get("gpu_memory", {})
        for name, key, text in (
            (names.GPU_MEMORY_ALLOCATED_BYTES, "allocated_bytes", "GPU memory held by tensors"),
            (names.GPU_MEMORY_RESERVED_BYTES, "reserved_bytes", "GPU memory reserved by torch's allocator"),
            (names.GPU_MEMORY_TOTAL_BYTES, "total_bytes", "GPU memory of the device"),
        ):
            yield GaugeMetricFamily(name, text, value=memory.get(key, 0))


class Metrics:
    def __init__(self, store_sizes: Callable[[], dict[str, int]]):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        # In multiprocess mode the values live in files; the scrape builds its own registry.
        target = None if self.multiprocess else self.registry
        self.requests = Counter(
            names.HTTP_REQUESTS_TOTAL, "HTTP requests", ["method", "endpoint", "status"], registry=target
        )
        self.request_seconds = Histogram(
            names.HTTP_REQUEST_DURATION_SECONDS, "HTTP request duration", ["method", "endpoint"],
            buckets=HTTP_BUCKETS, registry=target,
        )
        self.inference_seconds = Histogram(
            names.MODEL_INFERENCE_DURATION_SECONDS, "Model time per inference batch", ["model_name"],
            buckets=MODEL_BUCKETS, registry=target,
        )
        self._sizes = _StoreSizes(store_sizes)
        self._device: _Device | None = None
        if not self.multiprocess:
            self.registry.register(self._sizes)

    def watch_device(self, info: Callable[[], dict[str, Any]]) -> None:
        self._device = _Device(info)
        if not self.multiprocess:
            self.registry.register(self._device)

    def observe_inference(self, model_name: str, seconds: float) -> None:
        self.inference_seconds.labels(model_name=model_name).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self._sizes)
        if self._device is not None:
            registry.register(self._device)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (a BaseHTTPMiddleware would cost throughput). Endpoints are labelled by route
    template, and unmatched paths share one label, so label cardinality stays bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method=method, endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_seconds.labels(method=method, endpoint=endpoint).observe(
                time.perf_counter() - started
            )
