"""Privacy accounting: releases as data, durable ledgers, accountants, calibration, budgets."""

from privacy import wire
from privacy.accountants import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    UnknownAccountantError,
    delta_for_epsilon,
    epsilon,
    epsilon_all,
    epsilon_per_release,
)
from privacy.budget import BudgetCheck, check_budget, effective_budget
from privacy.calibration import calibrate_noise, steps_per_round
from privacy.ledger import Ledger, LedgerError
from privacy.releases import DpSgdRelease, GaussianRelease, Release, release_from_dict, validate_release_params

__all__ = [
    "ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "BudgetCheck", "DpSgdRelease", "GaussianRelease", "Ledger", "LedgerError",
    "Release", "UnknownAccountantError", "calibrate_noise", "check_budget", "delta_for_epsilon",
    "effective_budget", "epsilon", "epsilon_all", "epsilon_per_release", "release_from_dict",
    "steps_per_round", "validate_release_params", "wire",
]
