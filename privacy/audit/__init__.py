"""Empirical privacy auditing: lower bounds on epsilon measured from canary scores, beside the accountant's upper bound.

``one_run``: Steinke, Nasr & Jagielski (NeurIPS 2023), a valid lower bound from a single training run with m
canaries each included by a secret fair coin. ``many_runs``: Clopper-Pearson on the best threshold and a
Gaussian-DP estimate from scores pooled over several runs. ``scores``: the likelihood-ratio score of a
white-box Dirac canary under the claimed mechanism, and the choice of the number of guesses before scoring.
Nothing here imports the rest of dpfl: the statistics are checked on their own (tests/test_audit_statistics.py).
"""

from dpfl.privacy.audit.many_runs import ManyRunBounds, clopper_pearson_epsilon, gdp_epsilon, gdp_mu_estimate
from dpfl.privacy.audit.one_run import OneRunResult, guess_outcome, one_run_epsilon, one_run_p_value

__all__ = [
    "ManyRunBounds",
    "OneRunResult",
    "clopper_pearson_epsilon",
    "gdp_epsilon",
    "gdp_mu_estimate",
    "guess_outcome",
    "one_run_epsilon",
    "one_run_p_value",
]
