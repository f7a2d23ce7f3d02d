"""Budgets are checked before a release, never after: a party that would overspend declines to release."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dpfl.privacy.accountants import DEFAULT_ACCOUNTANT, DEFAULT_NEIGHBOURING, epsilon
from dpfl.privacy.releases import Release

__all__ = ["BudgetCheck", "check_budget"]


@dataclass(frozen=True)
class BudgetCheck:
    """The verdict on one proposed release, with the numbers behind it (for logs and decline messages)."""

    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float
    reason: str


def check_budget(releases: Sequence[Release], next_release: Release, delta: float, budget: float,
                 accountant: str = DEFAULT_ACCOUNTANT, *, neighbouring: str = DEFAULT_NEIGHBOURING) -> BudgetCheck:
    """May ``next_release`` be made by a party whose ledger is ``releases``? budget <= 0 means none.

    Allowed iff the cumulative epsilon after it stays <= budget (at ``delta``, by ``accountant``, under the
    ``neighbouring`` relation; an accountant that does not support it raises UnsupportedRelationError).
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or math.isnan(budget):
        raise ValueError(f"budget {budget!r} is not valid: expected a number (<= 0: no budget)")
    now = epsilon(releases, delta, accountant, neighbouring=neighbouring)
    after = epsilon([*releases, next_release], delta, accountant, neighbouring=neighbouring)
    how = accountant if neighbouring == DEFAULT_NEIGHBOURING else f"{accountant}, {neighbouring}"
    if budget <= 0:
        return BudgetCheck(True, now, after, float(budget), f"no budget: epsilon {now:.4f} -> {after:.4f}")
    if after > budget:
        return BudgetCheck(False, now, after, float(budget),
                           f"budget exhausted: epsilon would go from {now:.4f} to {after:.4f} > budget "
                           f"{budget:g} (delta {delta:g}, {how})")
    return BudgetCheck(True, now, after, float(budget),
                       f"within budget: epsilon {now:.4f} -> {after:.4f} <= {budget:g}")
