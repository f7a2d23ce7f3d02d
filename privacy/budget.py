"""Budgets are checked before a release, never after."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from privacy.accountants import DEFAULT_ACCOUNTANT, epsilon
from privacy.releases import Release


@dataclass(frozen=True)
class BudgetCheck:
    allowed: bool
    epsilon_now: float
    epsilon_after: float
    budget: float
    reason: str


def effective_budget(epsilon_budget: float, target_epsilon: float) -> float:
    """The budget a release must respect: the explicit one, a calibration target, or the smaller of both
    (0: none)."""
    if epsilon_budget and target_epsilon:
        return min(epsilon_budget, target_epsilon)
    return epsilon_budget or target_epsilon


def check_budget(releases: Sequence[Release], next_release: Release, delta: float, budget: float,
                 accountant: str = DEFAULT_ACCOUNTANT) -> BudgetCheck:
    now = epsilon(releases, delta, accountant)
    if budget <= 0:
        return BudgetCheck(True, now, float("nan"), budget, "no budget")
    after = epsilon([*releases, next_release], delta, accountant)
    if after > budget:
        return BudgetCheck(False, now, after, budget,
                           f"budget exhausted: epsilon would go from {now:.4f} to {after:.4f} > budget {budget:g}")
    return BudgetCheck(True, now, after, budget, f"within budget: epsilon {now:.4f} -> {after:.4f} <= {budget:g}")
