"""Fusion of the three per-model similarity scores, and the feedback rule that tunes the weights.

Pure functions over plain data so the math is tested without models or stores.

fusion_score = sum over models m of w_m * s_m, with s_m the cosine similarity in model m's space.
Feedback on an item moves weight towards the models that ranked it above their average (liked)
or below it (disliked), by a small step, then projects back onto the bounded simplex:
MIN_WEIGHT <= w_m <= MAX_WEIGHT and sum(w) = 1. So weights drift slowly and can never collapse
onto one model.
"""

from __future__ import annotations

from collections.abc import Mapping

from flashfit_contract.slots import MODELS

MIN_WEIGHT = 0.1
MAX_WEIGHT = 0.6
LEARNING_RATE = 0.05

Weights = dict[str, float]


def fuse(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return float(sum(weights[m] * scores[m] for m in MODELS))


def project_to_bounded_simplex(
    values: Mapping[str, float], low: float = MIN_WEIGHT, high: float = MAX_WEIGHT
) -> Weights:
    """The closest weights (Euclidean) with low <= w <= high and sum 1: clip(v - tau) for the tau
    that makes them sum to 1, found by bisection (the sum is monotone in tau)."""
    if not low * len(MODELS) <= 1.0 <= high * len(MODELS):
        raise ValueError("bounds admit no weights that sum to 1")
    raw = [float(values[m]) for m in MODELS]

    def total(tau: float) -> float:
        return sum(min(high, max(low, v - tau)) for v in raw)

    lo_tau, hi_tau = min(raw) - high - 1.0, max(raw) - low + 1.0
    for _ in range(100):
        mid = (lo_tau + hi_tau) / 2
        if total(mid) > 1.0:
            lo_tau = mid
        else:
            hi_tau = mid
    clipped = [min(high, max(low, v - hi_tau)) for v in raw]
    # Bisection leaves ~1e-16 of slack; put it on the weight with the most room.
    slack = 1.0 - sum(clipped)
    room = [high - c if slack > 0 else c - low for c in clipped]
    clipped[room.index(max(room))] += slack
    return dict(zip(MODELS, clipped, strict=True))


def apply_feedback(
    weights: Mapping[str, float], scores: Mapping[str, float], liked: bool, rate: float = LEARNING_RATE
) -> Weights:
    mean = sum(scores[m] for m in MODELS) / len(MODELS)
    sign = 1.0 if liked else -1.0
    moved = {m: weights[m] + sign * rate * (scores[m] - mean) for m in MODELS}
    return project_to_bounded_simplex(moved)


def initial_weights(clip: float, blip: float, fashion: float) -> Weights:
    return project_to_bounded_simplex({"clip": clip, "blip": blip, "fashion": fashion})
