"""Just enough of the Prometheus text format to read a histogram. Pure."""

from __future__ import annotations

import math
import re

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append((name, dict(_LABEL.findall(labels or "")), number))
    return samples


def histogram_by(samples: list[tuple[str, dict[str, str], float]], metric: str, label: str) -> dict[str, dict]:
    """{label value: {"sum", "count", "buckets": [(le, cumulative count)]}} for one histogram."""
    out: dict[str, dict] = {}
    for name, labels, value in samples:
        key = labels.get(label)
        if key is None:
            continue
        entry = out.setdefault(key, {"sum": 0.0, "count": 0.0, "buckets": {}})
        if name == f"{metric}_sum":
            entry["sum"] += value
        elif name == f"{metric}_count":
            entry["count"] += value
        elif name == f"{metric}_bucket" and "le" in labels:
            le = math.inf if labels["le"] in ("+Inf", "Inf") else float(labels["le"])
            entry["buckets"][le] = entry["buckets"].get(le, 0.0) + value
    for entry in out.values():
        entry["buckets"] = sorted(entry["buckets"].items())
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile(): linear interpolation inside the bucket holding the q-th sample."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # as Prometheus does: the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
