"""What `flashfit images prune` decides, as plain data: the tags found (on the engine or in the
registry), the plan (what stays and why, what goes) and the result. Pure: the local prune
(prune.py) and the registry's (registry.py) both apply this one policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IN_USE = "used by a container or service"
ROLLBACK = "rollback target"
NEWEST = "newest build"


@dataclass(frozen=True)
class ImageTag:
    version: str
    image_id: str
    created: str  # ISO 8601 from the engine; sorts chronologically


@dataclass
class PrunePlan:
    keep: dict[str, str] = field(default_factory=dict)  # version -> why
    remove: list[ImageTag] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": [{"version": v, "reason": r} for v, r in self.keep.items()],
            "remove": [{"version": t.version, "image_id": t.image_id[:19], "created": t.created} for t in self.remove],
        }


def plan_prune(tags: list[ImageTag], *, used_ids: set[str], used_versions: set[str], deployed: list[str], keep: int) -> PrunePlan:
    """What to keep and what to remove. `deployed` is newest first; `keep` >= 1."""
    reasons: dict[str, str] = {}
    for tag in tags:
        if tag.image_id in used_ids or tag.version in used_versions:
            reasons.setdefault(tag.version, IN_USE)
    present = {t.version for t in tags}
    for version in [v for v in deployed if v in present][:keep]:
        reasons.setdefault(version, ROLLBACK)
    ordered = sorted(tags, key=lambda t: t.created, reverse=True)
    for tag in ordered[:keep]:
        reasons.setdefault(tag.version, NEWEST)
    return PrunePlan(
        keep={t.version: reasons[t.version] for t in ordered if t.version in reasons},
        remove=[t for t in ordered if t.version not in reasons],
    )


@dataclass
class PruneResult:
    plan: PrunePlan
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # version -> the engine's reason

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "removed": self.removed, "refused": self.refused}
