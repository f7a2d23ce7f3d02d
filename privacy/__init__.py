"""Privacy accounting: releases as data, durable ledgers, accountants, calibration, budgets.

Imports nothing from the other packages of this repository (server, client, models, simulations):
both sides of a federation depend on it, so it must not depend on either.
"""

from dpfl.privacy import wire
from dpfl.privacy.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    UnknownAccountantError,
    clear_caches,
    delta_for_epsilon,
    epsilon,
    epsilon_all,
    epsilon_per_release,
)
from dpfl.privacy.budget import BudgetCheck, check_budget
from dpfl.privacy.calibration import calibrate_noise, steps_per_round
from dpfl.privacy.ledger import Ledger, LedgerError
from dpfl.privacy.policy import PolicyError, PrivacyPolicy, effective_budget, participation_cap
from dpfl.privacy.releases import (
    DpSgdRelease,
    GaussianRelease,
    Release,
    release_from_dict,
    validate_release_params,
)

__all__ = [
    "ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "BudgetCheck", "DpSgdRelease", "GaussianRelease", "Ledger", "LedgerError",
    "PolicyError", "PrivacyPolicy", "Release", "UnknownAccountantError", "calibrate_noise", "check_budget",
    "clear_caches", "delta_for_epsilon", "effective_budget", "epsilon", "epsilon_all", "epsilon_per_release",
    "participation_cap", "release_from_dict", "steps_per_round", "validate_release_params", "wire",
]
