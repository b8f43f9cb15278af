"""Single: one container. The new one starts beside the old, is gated, takes the traffic; the old
one stays running out of rotation through the monitor window, then is drained, stopped and
removed. Pure."""

from __future__ import annotations

import dataclasses

from flashfit_ops.config.model import Config
from flashfit_ops.plan.blue_green import replace_all
from flashfit_ops.plan.common import Target
from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.steps import Step


def plan(config: Config, observed: Observed, target: Target) -> list[Step]:
    return replace_all(config, observed, dataclasses.replace(target, replicas=1), keep_old=False)
