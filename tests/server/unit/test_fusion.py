from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashfit_server.fusion import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    MODELS,
    apply_feedback,
    fuse,
    initial_weights,
    project_to_bounded_simplex,
)

score = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
scores = st.fixed_dictionaries({m: score for m in MODELS})
raw_weight = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)


def _valid(weights: dict[str, float]) -> None:
    assert set(weights) == set(MODELS)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    for value in weights.values():
        assert MIN_WEIGHT - 1e-9 <= value <= MAX_WEIGHT + 1e-9


@given(st.fixed_dictionaries({m: raw_weight for m in MODELS}))
def test_projection_always_lands_in_bounds(values: dict[str, float]) -> None:
    _valid(project_to_bounded_simplex(values))


@given(st.lists(st.tuples(scores, st.booleans()), max_size=200))
def test_any_feedback_sequence_keeps_weights_bounded(events: list) -> None:
    weights = initial_weights(0.4, 0.3, 0.3)
    for item_scores, liked in events:
        weights = apply_feedback(weights, item_scores, liked)
        _valid(weights)


def test_projection_keeps_weights_that_are_already_valid() -> None:
    assert project_to_bounded_simplex({"clip": 0.4, "blip": 0.3, "fashion": 0.3}) == pytest.approx(
        {"clip": 0.4, "blip": 0.3, "fashion": 0.3}
    )


def test_liking_moves_weight_towards_the_model_that_scored_the_item_highest() -> None:
    start = initial_weights(0.4, 0.3, 0.3)
    liked = apply_feedback(start, {"clip": 0.1, "blip": 0.2, "fashion": 0.9}, liked=True)
    disliked = apply_feedback(start, {"clip": 0.1, "blip": 0.2, "fashion": 0.9}, liked=False)
    assert liked["fashion"] > start["fashion"] > disliked["fashion"]


def test_repeated_feedback_saturates_at_the_bound_instead_of_collapsing() -> None:
    weights = initial_weights(0.4, 0.3, 0.3)
    for _ in range(1000):
        weights = apply_feedback(weights, {"clip": 1.0, "blip": -1.0, "fashion": -1.0}, liked=True)
    assert weights["clip"] == pytest.approx(MAX_WEIGHT)
    assert min(weights.values()) >= MIN_WEIGHT - 1e-9


def test_fuse_is_the_weighted_sum() -> None:
    assert fuse({"clip": 1.0, "blip": 0.5, "fashion": 0.0}, {"clip": 0.5, "blip": 0.2, "fashion": 0.3}) == pytest.approx(0.6)
