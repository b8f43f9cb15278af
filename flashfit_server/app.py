"""The app factory. Building the app loads nothing; the lifespan starts a background thread that
loads the models and opens the stores, so /health answers at once and /ready waits for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from flashfit_server import __version__
from flashfit_server.datastore import DataStore, StoreError
from flashfit_server.errors import install_error_handlers
from flashfit_server.fusion import initial_weights
from flashfit_server.log import configure_logging
from flashfit_server.metrics import Metrics, MetricsMiddleware
from flashfit_server.middleware import AllowedHosts, BodySizeLimit, JsonShapeLimit, SecurityHeaders
from flashfit_server.models.device import DeviceUnavailable
from flashfit_server.models.registry import ModelNames, ModelRegistry
from flashfit_server.readiness import WorkerReadiness
from flashfit_server.replica import replica_for
from flashfit_server.routers import admin, fusion, health, items
from flashfit_server.service import Service
from flashfit_server.settings import Settings
from flashfit_server.vector_store import configure_faiss

log = logging.getLogger("flashfit_server")


class StartupRefused(RuntimeError):
    pass


def _load_in_background(app: FastAPI) -> None:
    service: Service = app.state.service

    def open_stores(registry: ModelRegistry) -> None:
        if not registry.all_loaded:
            return
        try:
            service.datastore.open(registry.dims())
        except Exception as exc:  # noqa: BLE001 - any failure must reach /ready, not kill the thread silently
            reason = exc if isinstance(exc, StoreError | OSError | ValueError) else f"{type(exc).__name__}: {exc}"
            log.error("data folder: cannot open the stores: %s", reason)
            app.state.startup_error = service.startup_error = f"data folder: {reason}"
            return
        if service.replica is not None:  # serve the whole shared catalogue before saying ready
            service.replica.catch_up()
            service.replica.start_following()
        app.state.readiness.mark_ready()
        log.info("ready: stores %s", service.datastore.sizes())

    service.registry.start_loading(then=open_stores)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        problems = settings.production_problems()
        if problems:
            for problem in problems:
                log.error("refusing to start in production: %s", problem)
            raise StartupRefused("refusing to start: " + "; ".join(problems))
        configure_faiss(settings.threads_per_worker)
        try:  # only DEVICE=cuda can refuse; auto and cpu choose in the loader thread (no torch import here)
            if settings.device == "cuda":
                app.state.service.registry.select_device()
        except DeviceUnavailable as exc:
            log.error("refusing to start: %s", exc)
            raise StartupRefused(f"refusing to start: {exc}") from None
        app.state.service.registry.queue.start()
        _load_in_background(app)
        yield
        app.state.readiness.withdraw()
        if app.state.service.replica is not None:
            app.state.service.replica.close()
        app.state.service.registry.queue.close()

    app = FastAPI(
        title="FlashFit recommendation server",
        version=__version__,
        lifespan=lifespan,
        description="Fashion recommendations fused from CLIP, BLIP-caption and fashion-CLIP similarity.",
    )
    datastore = DataStore(
        settings.vector_store_dir,
        kind=settings.vector_index,
        default_weights=initial_weights(*settings.fusion_weights),
        refresh_interval=settings.refresh_interval,
    )
    metrics = Metrics(store_sizes=datastore.sizes)
    registry = ModelRegistry(
        settings.model_cache_dir,
        ModelNames(settings.clip_model, settings.blip_model, settings.fashion_model),
        max_batch_size=settings.max_batch_size,
        threads=settings.threads_per_worker,
        caption_max_tokens=settings.caption_max_tokens,
        observe=metrics.observe_inference,
        device=settings.device,
        precision=settings.precision,
        max_batch_size_cuda=settings.max_batch_size_cuda,
    )
    metrics.watch_device(registry.device_info)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = Service(settings, registry, datastore, replica_for(settings, datastore))
    app.state.startup_error = None
    app.state.readiness = WorkerReadiness.from_env(settings.workers)

    install_error_handlers(app)
    for router in (health.router, items.router, fusion.router, admin.router):
        app.include_router(router)

    # add_middleware puts each new one outermost: the JSON shape check runs last, security
    # headers first (so even a rejection by another guard carries them).
    app.add_middleware(JsonShapeLimit, max_bytes=settings.max_json_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(AllowedHosts, allowed=settings.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    return app
