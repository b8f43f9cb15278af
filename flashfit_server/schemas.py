"""Request and response bodies of the HTTP API (they define the OpenAPI document too).

Request bodies are strict: unknown keys are refused, and JSON types are taken as they are (no
`true` for an id, no `1` for a boolean, no "10" for a number).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

MAX_ITEM_ID = 2**62  # faiss ids are int64; leave headroom
STRICT = ConfigDict(extra="forbid", strict=True)
_PLAIN_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")


def _plain_digits(value: object) -> object:
    # Path and query values arrive as text, and pydantic's lax int would read "1_0" as 10 and
    # " 10" or "+10" as 10 too: one number must have one spelling.
    if isinstance(value, str) and not _PLAIN_DIGITS.fullmatch(value):
        raise ValueError("must be a plain decimal number (digits only, no sign, spaces or leading zeros)")
    return value


# Put after the Path() or Query() of an int in a URL (item ids, offsets, limits): placed before
# it, FastAPI writes the bounds into the OpenAPI document as bare "ge"/"le" keys.
PLAIN_DIGITS = BeforeValidator(_plain_digits)


class Preferences(BaseModel):
    model_config = STRICT
    style: str | None = Field(None, max_length=100)
    occasion: str | None = Field(None, max_length=100)
    season: str | None = Field(None, max_length=100)

    def as_text(self) -> str:
        return " ".join(v.strip() for v in (self.style, self.occasion, self.season) if v and v.strip())


class RecommendRequest(BaseModel):
    # Exactly one query field, stated in the schema too so clients (and fuzzers) can see it.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
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
    model_config = STRICT
    clip_score: float = Field(ge=-1.0, le=1.0)
    blip_score: float = Field(ge=-1.0, le=1.0)
    fashion_score: float = Field(ge=-1.0, le=1.0)
    fusion_score: float | None = Field(None, description="accepted so a recommendation's scores can be sent back whole; unused")


class FeedbackRequest(BaseModel):
    model_config = STRICT
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
