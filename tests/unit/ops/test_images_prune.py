"""Which backend image tags `flashfit images prune` keeps: pure decisions, no engine."""

from __future__ import annotations

from flashfit_ops.images.tags import IN_USE, NEWEST, ROLLBACK, ImageTag, plan_prune


def tags(*versions: str) -> list[ImageTag]:
    """One image per version, created in the order given (the last is the newest)."""
    return [ImageTag(v, f"sha256:{i:064x}", f"2026-11-{i + 1:02d}T10:00:00Z") for i, v in enumerate(versions)]


def test_keeps_rollback_targets_newest_builds_and_whatever_is_in_use() -> None:
    found = tags("v1", "v2", "v3", "v4", "v5", "v6", "next")
    plan = plan_prune(
        found,
        used_ids={found[0].image_id},  # a stopped, retained container of v1
        used_versions=set(),
        deployed=["v5", "v4", "v3", "v2"],  # newest first
        keep=2,
    )
    assert plan.keep == {"next": NEWEST, "v6": NEWEST, "v5": ROLLBACK, "v4": ROLLBACK, "v1": IN_USE}
    assert [t.version for t in plan.remove] == ["v3", "v2"]  # newest first


def test_a_version_deployed_but_no_longer_tagged_does_not_use_up_a_keep_slot() -> None:
    found = tags("v1", "v2", "v3")
    plan = plan_prune(found, used_ids=set(), used_versions=set(), deployed=["gone", "v1"], keep=1)
    assert plan.keep == {"v3": NEWEST, "v1": ROLLBACK}
    assert [t.version for t in plan.remove] == ["v2"]


def test_swarm_versions_are_kept_by_name() -> None:
    plan = plan_prune(tags("v1", "v2", "v3"), used_ids=set(), used_versions={"v1"}, deployed=[], keep=1)
    assert plan.keep == {"v3": NEWEST, "v1": IN_USE}


def test_two_tags_on_one_image_in_use_are_both_kept() -> None:
    same = "sha256:" + "a" * 64
    found = [ImageTag("v1", same, "2026-11-01T00:00:00Z"), ImageTag("v1-again", same, "2026-11-01T00:00:00Z"),
             ImageTag("v2", "sha256:" + "b" * 64, "2026-11-02T00:00:00Z"), ImageTag("v3", "sha256:" + "c" * 64, "2026-11-03T00:00:00Z")]
    plan = plan_prune(found, used_ids={same}, used_versions=set(), deployed=[], keep=1)
    assert plan.keep == {"v3": NEWEST, "v1": IN_USE, "v1-again": IN_USE}
    assert [t.version for t in plan.remove] == ["v2"]


def test_nothing_to_remove_when_everything_is_kept() -> None:
    plan = plan_prune(tags("v1", "v2"), used_ids=set(), used_versions=set(), deployed=["v1"], keep=3)
    assert plan.remove == [] and set(plan.keep) == {"v1", "v2"}
    assert plan.to_dict()["remove"] == []
