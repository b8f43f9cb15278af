"""What the routers call: embedding queries and new items through the model registry, ranking
and storing through the data store. One instance per worker process (app.state.service)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from flashfit_server.catalog import Item
from flashfit_contract.datafolder import DataFolderError
from flashfit_server.datastore import STORE_NAMES, DataState, DataStore, FusionState, NewItem, NotFound, StoreError
from flashfit_server.errors import ApiError
from flashfit_server.fusion import LEARNING_RATE, MAX_WEIGHT, MIN_WEIGHT, apply_feedback
from flashfit_server.images import (
    DecodedImage,
    DecodeSlots,
    base64_payload,
    decode_base64_image,
    decode_image,
    is_cheap_to_decode,
)
from flashfit_server.inference import Deadline, InferenceTimeout
from flashfit_server.models.encoders import l2_normalise
from flashfit_server.models.registry import ModelRegistry
from flashfit_server.recommend import Ranked, rank
from flashfit_server.replica import Replica
from flashfit_server.schemas import FeedbackRequest, RecommendRequest
from flashfit_server.settings import Settings
from flashfit_server.sharedlog import SyncError

log = logging.getLogger(__name__)
T = TypeVar("T")

# How far preferences pull the query towards their text ("casual summer"): enough to reorder
# close candidates, not enough to replace the query.
PREFERENCE_WEIGHT = 0.5
SERVED_SCORES_LIMIT = 10_000
INLINE_BASE64_CHARS = 700_000  # about 512 kB of image: decoded on the event loop if small in pixels too
INLINE_RANK_ITEMS = 10_000  # three flat searches take ~1 ms here: cheaper than a thread handoff


@dataclass
class ItemFields:
    name: str
    category: str | None = None
    color: str | None = None
    tags: list[str] = field(default_factory=list)
    user_id: str | None = None


@dataclass
class CatalogueVectors:
    vectors: dict[str, np.ndarray]  # one row per store
    caption: str


def not_found(item_id: int) -> ApiError:
    return ApiError(404, "not_found", f"item {item_id} does not exist")


def _store_queries(clip: np.ndarray, fashion: np.ndarray) -> dict[str, np.ndarray]:
    # The blip store holds CLIP text embeddings of captions, so CLIP's query searches it too.
    return {"clip": clip, "blip": clip, "fashion": fashion}


def _blend(query: np.ndarray, preference: np.ndarray) -> np.ndarray:
    return l2_normalise((query + PREFERENCE_WEIGHT * preference)[None, :])[0]


def _catalogue_vectors(clip: list, fashion: list, captions: list[str], caption_vecs: list) -> list[CatalogueVectors]:
    return [
        CatalogueVectors({"clip": c, "blip": b, "fashion": f}, caption)
        for c, f, caption, b in zip(clip, fashion, captions, caption_vecs, strict=True)
    ]


def embed_catalogue_sync(registry: ModelRegistry, images: list) -> list[CatalogueVectors]:
    """Embed and caption images for ingestion, blocking; the queue batches them."""
    clip_f = registry.submit_images("clip", images)
    fashion_f = registry.submit_images("fashion", images)
    caption_f = registry.submit_captions(images)
    captions = [f.result() for f in caption_f]
    caption_vecs = [f.result() for f in registry.submit_texts("clip", captions)]
    return _catalogue_vectors([f.result() for f in clip_f], [f.result() for f in fashion_f], captions, caption_vecs)


class Service:
    def __init__(self, settings: Settings, registry: ModelRegistry, datastore: DataStore,
                 replica: Replica | None = None):
        self.settings = settings
        self.registry = registry
        self.datastore = datastore
        self.replica = replica  # set when the catalogue follows a shared log (CATALOG_SYNC_URL)
        self.recommendations_served = 0
        self._served: OrderedDict[int, dict[str, float]] = OrderedDict()
        self._served_lock = threading.Lock()
        # Bounded decodes at once; a request waits for a slot no longer than for the models.
        self.decoder = DecodeSlots(settings.decode_concurrency, settings.inference_timeout)
        self.startup_error: str | None = None  # why the stores could not be opened (also in /ready)

    @property
    def ready(self) -> bool:
        caught_up = self.replica is None or self.replica.caught_up  # a write needs the whole log applied
        return self.registry.all_loaded and self.datastore.is_open and caught_up

    def not_ready_reason(self) -> str | None:
        """The first problem /ready lists under checks.errors (None: still loading, or ready)."""
        if self.startup_error:
            return self.startup_error
        if self.datastore.problem:
            return f"data folder: {self.datastore.problem}"
        failed = [f"{slot}: {s.error}" for slot, s in self.registry.slots.items() if s.status == "failed"]
        return failed[0] if failed else None

    def _not_ready(self, loading: str) -> ApiError:
        reason = self.not_ready_reason()
        return ApiError(503, "not_ready", f"not ready: {reason}" if reason else loading)

    @contextlib.contextmanager
    def read(self) -> Iterator[DataState]:
        """The data store's current state, or a 503 while it is not open (never a 500)."""
        if not self.datastore.is_open:
            raise self._not_ready("the data folder is not open yet; see /ready")
        with self.datastore.read() as state:
            yield state

    def require_ready(self) -> None:
        if not self.ready:
            raise self._not_ready("models or vector stores are still loading; retry shortly")

    def _write(self, write: Callable[[], T]) -> T:
        """A data folder write; a folder that cannot take it (malformed on disk, a broken
        catalogue, a full disk) is a 503 naming the reason, as /ready does, never a 500."""
        try:
            return write()
        except (StoreError, DataFolderError, sqlite3.DatabaseError) as exc:
            log.error("data folder write refused: %s", exc)
            raise ApiError(503, "not_ready", f"not ready: data folder: {exc}") from None
        except OSError as exc:
            log.error("data folder write failed: %s", exc)
            raise ApiError(503, "store_unavailable", f"the data folder cannot be written: {exc.strerror or exc}") from None

    async def _wait(self, futures: list[Future], deadline: Deadline) -> list:
        try:
            return await deadline.wait(futures)
        except InferenceTimeout as exc:
            raise ApiError(503, "inference_timeout", f"{exc}; try again or raise INFERENCE_TIMEOUT") from None

    # --- ingestion -----------------------------------------------------------------------------

    async def embed_catalogue(self, images: list, deadline: Deadline) -> list[CatalogueVectors]:
        n = len(images)
        futures = (
            self.registry.submit_images("clip", images)
            + self.registry.submit_images("fashion", images)
            + self.registry.submit_captions(images)
        )
        results = await self._wait(futures, deadline)
        clip, fashion, captions = results[:n], results[n : 2 * n], results[2 * n :]
        caption_vecs = await self._wait(self.registry.submit_texts("clip", captions), deadline)
        return _catalogue_vectors(clip, fashion, captions, caption_vecs)

    async def add_item(self, image: DecodedImage, fields: ItemFields) -> Item:
        self.require_ready()
        [embedded] = await self.embed_catalogue([image.image], Deadline(self.settings.inference_timeout))
        new = NewItem(
            image_data=image.data, image_extension=image.extension, vectors=embedded.vectors,
            name=fields.name, caption=embedded.caption, category=fields.category,
            color=fields.color, tags=fields.tags, user_id=fields.user_id,
        )
        [item] = await run_in_threadpool(self._write, lambda: self._store_items([new]))
        return item

    def _store_items(self, new: list[NewItem]) -> list[Item]:
        if self.replica is None:
            return self.datastore.add_items(new)
        try:
            return self.replica.add_items(new)
        except SyncError as exc:
            raise ApiError(503, "catalog_sync_unavailable", f"not stored: {exc}") from None

    # --- recommendation ------------------------------------------------------------------------

    async def _query_vectors(self, req: RecommendRequest, deadline: Deadline) -> tuple[dict[str, np.ndarray], set[int]]:
        preference = req.preferences.as_text() if req.preferences else ""
        futures: list[Future] = []
        if req.text is not None:
            futures += self.registry.submit_texts("clip", [req.text]) + self.registry.submit_texts("fashion", [req.text])
        elif req.image_data is not None:
            limits = (self.settings.max_image_bytes, self.settings.max_image_pixels)
            data = base64_payload(req.image_data, limits[0]) if len(req.image_data) <= INLINE_BASE64_CHARS else None
            if data is not None and is_cheap_to_decode(data):
                image = decode_image(data, *limits)  # ~1 ms: cheaper than a thread handoff
            else:
                image = await self.decoder.run(decode_base64_image, req.image_data, *limits)
            futures += self.registry.submit_images("clip", [image.image])
            futures += self.registry.submit_images("fashion", [image.image])
        if preference:
            futures += self.registry.submit_texts("clip", [preference])
            futures += self.registry.submit_texts("fashion", [preference])
        vectors = await self._wait(futures, deadline) if futures else []
        exclude: set[int] = set()
        if req.item_id is not None:
            queries = await run_in_threadpool(self._stored_vectors, req.item_id)
            exclude = {req.item_id}
        else:
            queries = _store_queries(vectors[0], vectors[1])
            vectors = vectors[2:]
        if preference:
            clip_pref, fashion_pref = vectors[-2], vectors[-1]
            prefs = {"clip": clip_pref, "blip": clip_pref, "fashion": fashion_pref}
            queries = {name: _blend(q, prefs[name]) for name, q in queries.items()}
        return queries, exclude

    def _require_item(self, item_id: int) -> None:
        """404 unless the item exists, looking again at the data folder if this worker's state
        is older than a write made through another worker."""
        with self.read() as state:
            if item_id in state.catalog.items:
                return
        if not self.datastore.catch_up():
            raise not_found(item_id)
        with self.read() as state:
            if item_id not in state.catalog.items:
                raise not_found(item_id)

    def _stored_vectors(self, item_id: int) -> dict[str, np.ndarray]:
        self._require_item(item_id)
        with self.read() as state:  # as new as the one that had the item, or newer
            if item_id not in state.catalog.items:
                raise not_found(item_id)
            return {name: state.stores[name].vectors([item_id])[0] for name in STORE_NAMES}

    def _rank(self, req: RecommendRequest, queries: dict[str, np.ndarray], exclude: set[int]):  # noqa: ANN202
        with self.read() as state:
            weights = dict(state.fusion.weights)
            ranking = rank(state, queries, weights, req.limit, exclude, req.user_id)
            items = state.catalog.fetch(r.item_id for r in ranking.results)
        return ranking, items, weights

    def _remember(self, results: list[Ranked]) -> None:
        with self._served_lock:
            for r in results:
                self._served[r.item_id] = r.scores
                self._served.move_to_end(r.item_id)
            while len(self._served) > SERVED_SCORES_LIMIT:
                self._served.popitem(last=False)
            self.recommendations_served += 1

    async def recommend(self, req: RecommendRequest) -> dict:
        started = time.perf_counter()
        self.require_ready()
        queries, exclude = await self._query_vectors(req, Deadline(self.settings.inference_timeout))
        if self.datastore.sizes()["clip"] <= INLINE_RANK_ITEMS:
            ranking, items, weights = self._rank(req, queries, exclude)
        else:
            ranking, items, weights = await run_in_threadpool(self._rank, req, queries, exclude)
        self._remember(ranking.results)
        recommendations = []
        for r in ranking.results:
            item = items[r.item_id]
            recommendations.append(
                {
                    "item_id": item.id,
                    "name": item.name,
                    "category": item.category,
                    "image_url": f"/api/items/{item.id}/image",
                    "scores": {f"{name}_score": r.scores[name] for name in STORE_NAMES}
                    | {"fusion_score": r.fusion_score},
                    "tags": item.tags,
                    "description": item.caption,
                }
            )
        return {
            "status": "success",
            "recommendations": recommendations,
            "metadata": {
                "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
                "models_used": list(STORE_NAMES),
                "total_candidates": ranking.total_candidates,
                "fusion_weights": weights,
            },
        }

    # --- feedback and stats --------------------------------------------------------------------

    def feedback(self, req: FeedbackRequest) -> dict:
        self._require_item(req.item_id)
        scores: dict[str, float] | None
        if req.scores is not None:
            scores = {"clip": req.scores.clip_score, "blip": req.scores.blip_score, "fashion": req.scores.fashion_score}
        else:
            with self._served_lock:
                scores = self._served.get(req.item_id)

        def change(current: FusionState) -> FusionState:
            weights = apply_feedback(current.weights, scores, req.liked) if scores else current.weights
            return FusionState(weights, current.liked + int(req.liked), current.disliked + int(not req.liked))

        updated = self._write(lambda: self.datastore.update_fusion(change))
        return {
            "status": "success",
            "applied": scores is not None,
            "reason": None if scores else "no scores known for this item; pass `scores` from the recommendation",
            "fusion_weights": updated.weights,
        }

    def stats(self) -> dict:
        with self.read() as state:
            fusion = state.fusion
            item_count = len(state.catalog.items)
        return {
            "fusion_weights": fusion.weights,
            "weight_bounds": {"min": MIN_WEIGHT, "max": MAX_WEIGHT},
            "learning_rate": LEARNING_RATE,
            "feedback": {"liked": fusion.liked, "disliked": fusion.disliked},
            "catalogue": {"items": item_count, "vector_stores": self.datastore.sizes()},
            "worker": {
                "pid": os.getpid(), "ready": self.ready, "recommendations_served": self.recommendations_served,
            },
        }

    def get_item(self, item_id: int) -> Item:
        with self.read() as state:
            item = state.catalog.items.get(item_id)
        if item is None and self.datastore.catch_up():
            with self.read() as state:
                item = state.catalog.items.get(item_id)
        if item is None:
            raise not_found(item_id)
        return item

    def delete_item(self, item_id: int) -> Item:
        try:
            replica = self.replica
            if replica is not None:
                return self._write(lambda: replica.delete_item(item_id))
            return self._write(lambda: self.datastore.delete_item(item_id))
        except NotFound:
            raise not_found(item_id) from None
        except SyncError as exc:
            raise ApiError(503, "catalog_sync_unavailable", f"not deleted: {exc}") from None
