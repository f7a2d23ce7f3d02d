"""Privacy accounting: releases as data, durable ledgers, accountants, calibration, budgets, policy.

Imports nothing from the other packages of this repository (server, client, models, simulations):
both sides of a federation depend on it, so it must not depend on either. The names below load their
module on first use (PEP 562), so ``dpfl.privacy.rundata`` or ``dpfl.privacy.policy`` alone do not pull
in dp-accounting, Opacus and torch (seconds of imports for a command that only reads a run directory).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dpfl.privacy.accountants": (
        "ACCOUNTANTS", "ACCOUNTANT_REGISTRY", "DEFAULT_ACCOUNTANT", "DEFAULT_NEIGHBOURING", "NEIGHBOURING_RELATIONS",
        "Accountant", "UnknownAccountantError", "UnsupportedRelationError", "accountants_for", "clear_caches",
        "delta_for_epsilon", "epsilon", "epsilon_all", "epsilon_per_release", "get_accountant",
        "register_accountant", "replace_one_cross_check"),
    "dpfl.privacy.budget": ("BudgetCheck", "check_budget"),
    "dpfl.privacy.calibration": ("calibrate_noise", "steps_per_round"),
    "dpfl.privacy.ledger": ("Ledger", "LedgerError"),
    "dpfl.privacy.ledger_chain": ("LedgerTamperedError",),
    "dpfl.privacy.policy": ("PolicyError", "PrivacyPolicy", "effective_budget", "participation_cap"),
    "dpfl.privacy.releases": ("DpSgdRelease", "FixedCohortGaussianRelease", "GaussianRelease", "Release",
                              "release_from_dict", "validate_release_params"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dpfl.privacy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
