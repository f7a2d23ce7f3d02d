"""Epsilon of ledger rows straight from dp-accounting, not through dpfl's accountants: the independent check."""

from __future__ import annotations

import dp_accounting

RELATIONS = {"add-remove": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
             "replace-one": dp_accounting.NeighboringRelation.REPLACE_ONE}


def independent_pld_epsilon(entries: list[dict], delta: float, relation: str = "add-remove") -> float:
    """dp-accounting's PLD (interval 1e-4) over ledger rows with sample_rate, noise_multiplier and steps."""
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=RELATIONS[relation],
                                          value_discretization_interval=1e-4)
    for e in entries:
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e["sample_rate"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])),
            e["steps"]))
    return acc.get_epsilon(delta)
