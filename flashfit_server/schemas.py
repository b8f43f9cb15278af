"""Request and response bodies of the HTTP API (they define the OpenAPI document too)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_ITEM_ID = 2**62  # faiss ids are int64; leave headroom


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: str | None = Field(None, max_length=100)
    occasion: str | None = Field(None, max_length=100)
    season: str | None = Field(None, max_length=100)

    def as_text(self) -> str:
        return " ".join(v.strip() for v in (self.style, self.occasion, self.season) if v and v.strip())


class RecommendRequest(BaseModel):
    # Exactly one query field, stated in the schema too so clients (and fuzzers) can see it.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["image_data"]}, {"required": ["item_id"]}, {"required": ["text"]}]},
    )
    image_data: str | None = Field(None, description="base64 image (a data: URL prefix is accepted)")
    item_id: int | None = Field(None, ge=1, le=MAX_ITEM_ID)
    text: str | None = Field(None, min_length=1, max_length=1000)
    user_id: str | None = Field(None, min_length=1, max_length=128)
    preferences: Preferences | None = None
    limit: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _one_query(self) -> RecommendRequest:
        given = [f for f in ("image_data", "item_id", "text") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image_data, item_id, text")
        return self


class Scores(BaseModel):
    clip_score: float
    blip_score: float
    fashion_score: float
    fusion_score: float


class Recommendation(BaseModel):
    item_id: int
    name: str
    category: str | None
    image_url: str
    scores: Scores
    tags: list[str]
    description: str


class RecommendMetadata(BaseModel):
    processing_time_ms: float
    models_used: list[str]
    total_candidates: int
    fusion_weights: dict[str, float]


class RecommendResponse(BaseModel):
    status: str
    recommendations: list[Recommendation]
    metadata: RecommendMetadata


class FeedbackScores(BaseModel):
    model_config = ConfigDict(extra="ignore")
    clip_score: float = Field(ge=-1.0, le=1.0)
    blip_score: float = Field(ge=-1.0, le=1.0)
    fashion_score: float = Field(ge=-1.0, le=1.0)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int = Field(ge=1, le=MAX_ITEM_ID)
    liked: bool
    scores: FeedbackScores | None = Field(
        None, description="the scores the recommendation carried; defaults to what this worker served last"
    )


class ItemOut(BaseModel):
    id: int
    name: str
    category: str | None
    color: str | None
    tags: list[str]
    user_id: str | None
    caption: str
    image_url: str
    created_at: str


class ItemPage(BaseModel):
    items: list[ItemOut]
    total: int
    offset: int
    limit: int


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dest: str = Field(
        min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$",
        description="folder under <data dir>/_snapshots, e.g. _snapshots/2025-01-01",
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
