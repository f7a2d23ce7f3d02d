"""The audit's statistics (privacy/audit): the one-run bound's coverage on mechanisms whose epsilon is known, its
agreement with jax_privacy's auditor (a development check, skipped where jax_privacy is absent), and the many-run
bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from dpfl.privacy.audit.many_runs import clopper_pearson_epsilon, gdp_epsilon, gdp_mu_estimate, many_run_bounds
from dpfl.privacy.audit.one_run import guess_outcome, one_run_audit, one_run_epsilon, one_run_p_value
from dpfl.privacy.audit.scores import planned_guesses, round_llr


def test_without_delta_the_p_value_is_the_binomial_tail():
    p = special.expit(1.3)
    assert one_run_p_value(1000, 100, 80, 1.3, 0.0) == pytest.approx(stats.binom.sf(79, 100, p), rel=1e-12)
    # delta only adds: the p-value never falls when delta grows, and grows with eps
    assert one_run_p_value(1000, 100, 80, 1.3, 1e-5) >= one_run_p_value(1000, 100, 80, 1.3, 0.0)
    assert one_run_p_value(1000, 100, 80, 1.0, 1e-5) < one_run_p_value(1000, 100, 80, 1.3, 1e-5)


def test_the_bound_is_where_the_p_value_crosses_the_significance():
    eps = one_run_epsilon(1000, 200, 180, 1e-5, 0.95)
    assert one_run_p_value(1000, 200, 180, eps, 1e-5) == pytest.approx(0.05, abs=1e-6)
    assert one_run_epsilon(1000, 200, 100, 1e-5, 0.95) == 0.0  # chance-level guessing proves nothing
    # every guess right is the largest bound r guesses can give: p^r = 0.05 at delta = 0
    assert one_run_epsilon(1000, 100, 100, 0.0, 0.95) == pytest.approx(special.logit(0.05 ** (1 / 100)), rel=1e-5)


def test_guesses_count_top_scores_as_in_and_bottom_scores_as_out():
    scores = np.array([0.1, 5.0, 3.0, -2.0, 0.0, 4.0])
    coins = np.array([False, True, False, False, True, True])
    assert guess_outcome(scores, coins, 2, 0) == (2, 2)  # 5.0 and 4.0: both in
    assert guess_outcome(scores, coins, 3, 1) == (4, 3)  # 3.0 is out (wrong); -2.0 guessed out (right)
    with pytest.raises(ValueError):
        guess_outcome(scores, coins, 4, 3)


def _randomised_response_scores(m: int, eps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    coins = rng.random(m) < 0.5
    truthful = rng.random(m) < special.expit(eps)
    return np.where(truthful, coins, ~coins).astype(float) + 1e-9 * rng.random(m), coins


def _gaussian_scores(m: int, mu: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    coins = rng.random(m) < 0.5
    return rng.normal(mu * coins, 1.0), coins


def test_one_run_bound_covers_randomised_response_of_known_epsilon():
    """eps-DP randomised response is the worst case of the bound: it must exceed eps in at most ~5 % of runs."""
    rng, eps, trials = np.random.default_rng(7), 1.0, 400
    exceed, bounds = 0, []
    for _ in range(trials):
        scores, coins = _randomised_response_scores(1000, eps, rng)
        bound = one_run_audit(scores, coins, guesses_in=200, guesses_out=200, delta=0.0).epsilon_lower_bound
        exceed += bound > eps
        bounds.append(bound)
    assert exceed <= stats.binom.ppf(0.999, trials, 0.05)  # 5 % nominal, with room for chance
    assert np.median(bounds) > 0.6 * eps  # and it is not vacuous


def test_one_run_bound_covers_the_gaussian_mechanism():
    """mu-GDP scores with its epsilon at delta: the bound stays below it at the stated confidence."""
    rng, mu, delta, trials = np.random.default_rng(8), 1.0, 1e-5, 200
    true_eps = gdp_epsilon(mu, delta)
    exceed = 0
    for _ in range(trials):
        scores, coins = _gaussian_scores(1000, mu, rng)
        exceed += one_run_audit(scores, coins, guesses_in=100, guesses_out=100,
                                delta=delta).epsilon_lower_bound > true_eps
    assert exceed <= stats.binom.ppf(0.999, trials, 0.05)


def test_gdp_epsilon_is_the_gaussian_mechanisms():
    dp_accounting = pytest.importorskip("dp_accounting")
    for eps, delta in ((0.5, 1e-5), (2.0, 1e-5), (8.0, 1e-6)):
        sigma = dp_accounting.get_sigma_gaussian(eps, delta)
        assert gdp_epsilon(1 / sigma, delta) == pytest.approx(eps, rel=1e-4)


def test_many_run_bounds_separate_a_leaky_from_a_private_mechanism():
    rng = np.random.default_rng(9)
    leaky_in, leaky_out = rng.normal(4.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000)
    eps, _, fpr, fnr = clopper_pearson_epsilon(leaky_in, leaky_out, 1e-5)
    assert eps > 2.0 and min(fpr, fnr) < 0.01  # one error rate is tiny at the chosen threshold
    assert gdp_mu_estimate(leaky_in, leaky_out) == pytest.approx(4.0, rel=0.05)
    same_in, same_out = rng.normal(0.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000)
    result = many_run_bounds(same_in, same_out, runs=2, delta=1e-5)
    assert result.clopper_pearson_epsilon < 0.2 and result.gdp_epsilon_estimate < 0.5


def test_clopper_pearson_bound_covers_the_gaussian_mechanism():
    rng, mu, delta, trials = np.random.default_rng(10), 1.0, 1e-5, 100
    true_eps = gdp_epsilon(mu, delta)
    exceed = sum(clopper_pearson_epsilon(rng.normal(mu, 1, 500), rng.normal(0, 1, 500), delta, seed=k)[0] > true_eps
                 for k in range(trials))
    assert exceed <= stats.binom.ppf(0.999, trials, 0.05)


def test_round_llr_is_the_likelihood_ratio_of_the_claimed_round():
    q, steps, sigma = 0.1, 5, 1.3
    y = np.array([-1.0, 0.3, 2.5])
    counts = np.arange(steps + 1)
    p_in = (stats.binom.pmf(counts, steps, q)[None, :] *
            stats.norm.pdf(y[:, None], counts[None, :], sigma * math.sqrt(steps))).sum(1)
    p_out = stats.norm.pdf(y, 0, sigma * math.sqrt(steps))
    np.testing.assert_allclose(round_llr(y, q, steps, sigma), np.log(p_in / p_out), rtol=1e-10)


def test_planned_guesses_depend_only_on_public_parameters():
    a = planned_guesses(1000, rounds=10, sample_rate=1.0, steps=1, noise_multiplier=6.3, delta=1e-5)
    assert a == planned_guesses(1000, rounds=10, sample_rate=1.0, steps=1, noise_multiplier=6.3, delta=1e-5)
    assert 0 < sum(a) <= 1000


def test_one_run_bound_agrees_with_jax_privacy():
    """Development check: jax_privacy's CanaryScoreAuditor.epsilon_one_run at the threshold that makes its guesses
    ours (the top k scores, "in") gives the same bound."""
    auditing = pytest.importorskip("jax_privacy.auditing")
    rng = np.random.default_rng(11)
    for mu, k in ((1.0, 100), (2.0, 200), (3.0, 50)):
        scores, coins = _gaussian_scores(1000, mu, rng)
        ours = one_run_audit(scores, coins, guesses_in=k, guesses_out=0, delta=1e-5).epsilon_lower_bound
        threshold = np.sort(scores)[-k]
        theirs = auditing.CanaryScoreAuditor(scores[coins], scores[~coins]).epsilon_one_run(
            0.05, 1e-5, threshold_strategy=auditing.Explicit(threshold))
        assert ours == pytest.approx(theirs, abs=1e-4), (mu, k)
