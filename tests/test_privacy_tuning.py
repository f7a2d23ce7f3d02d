"""Tuning accounting (dpfl.privacy.tuning), checked against independent computations with the accountants.

(a) a grid on one partition: per client, every private run's ledger composed by the runs' accountant;
(b) different partitions: RDP composition of each run's worst client, from privacy's RDP (``_rdp``);
(c) Papernot & Steinke (Poisson and truncated negative binomial): the theorems' formulas evaluated here on
    privacy's RDP curves, and hand computations for one Gaussian mechanism.
Each is also checked through the sweep's own path, on a synthetic sweep directory written here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dpfl.privacy import DpSgdRelease, Ledger, UnknownAccountantError, delta_for_epsilon, epsilon, tuning
from dpfl.privacy import _rdp as rdp_lib
from dpfl.simulations.sweeps import accounting
from dpfl.simulations.sweeps.spec import expand, spec_from_dict

DELTA = 1e-5
ORDERS = rdp_lib.ORDERS


def _releases(sigma: float, q: float, steps: int, rounds: int) -> list[DpSgdRelease]:
    return [DpSgdRelease(sigma, q, steps, round=r) for r in range(1, rounds + 1)]


# Two runs of the same two clients (one partition): client-1 holds fewer records (larger q).
RUN_A = {"client-0": _releases(1.0, 0.05, 20, 2), "client-1": _releases(1.0, 0.1, 10, 2)}
RUN_B = {"client-0": _releases(1.5, 0.05, 20, 3), "client-1": _releases(1.5, 0.1, 10, 3)}


def _rdp_by_hand(releases: list[DpSgdRelease]) -> tuple[np.ndarray, np.ndarray]:
    """RDP adds up over releases: steps x one step's RDP, both libraries' curves."""
    op, dp = np.zeros(len(ORDERS)), np.zeros(len(ORDERS))
    for r in releases:
        one_op, one_dp = rdp_lib.rdp_one_step(r.noise_multiplier, r.sample_rate)
        op, dp = op + r.steps * one_op, dp + r.steps * one_dp
    return op, dp


def _worst_client(run: dict[str, list[DpSgdRelease]]) -> tuple[np.ndarray, np.ndarray]:
    curves = [_rdp_by_hand(v) for v in run.values()]
    return np.max([c[0] for c in curves], axis=0), np.max([c[1] for c in curves], axis=0)


def _to_epsilon(op: np.ndarray, dp: np.ndarray) -> float:
    return float(rdp_lib.epsilon(op[None, :], dp[None, :], DELTA)[0])


# --- (a) a grid on one partition ---------------------------------------------------------------------------
def test_grid_composes_each_clients_ledgers_of_every_run_with_the_run_accountant() -> None:
    for accountant in ("pld", "rdp"):
        direct = max(epsilon(RUN_A[c] + RUN_B[c], DELTA, accountant) for c in RUN_A)
        assert tuning.composed_epsilon([RUN_A, RUN_B], DELTA, [accountant]) == pytest.approx(direct, rel=1e-12)
    # more than one run's releases: more than either run alone
    alone = max(epsilon(v, DELTA, "pld") for run in (RUN_A, RUN_B) for v in run.values())
    assert tuning.composed_epsilon([RUN_A, RUN_B], DELTA, ["pld"]) > alone * 1.05
    # runs kept with different accountants: the largest epsilon over those accountants (conservative)
    both = tuning.composed_epsilon([RUN_A, RUN_B], DELTA, ["rdp", "pld"])
    per = {a: tuning.composed_epsilon([RUN_A, RUN_B], DELTA, [a]) for a in ("pld", "rdp")}
    assert per["rdp"] > per["pld"] and both == pytest.approx(max(per.values()), rel=1e-12)
    assert tuning.composed_epsilon([], DELTA) == 0.0
    with pytest.raises(UnknownAccountantError):
        tuning.composed_epsilon([RUN_A], DELTA, ["moments"])


# --- (b) different partitions --------------------------------------------------------------------------------
def test_different_partitions_add_each_runs_worst_client_in_rdp() -> None:
    a_op, a_dp = _worst_client(RUN_A)
    b_op, b_dp = _worst_client(RUN_B)
    direct = _to_epsilon(a_op + b_op, a_dp + b_dp)
    assert tuning.rdp_composed_epsilon([RUN_A, RUN_B], DELTA) == pytest.approx(direct, rel=1e-12)
    # sound for any mapping of records to clients: no smaller than one client composed over both runs
    assert direct >= tuning.composed_epsilon([RUN_A, RUN_B], DELTA, ["rdp"]) - 1e-12
    assert direct > max(epsilon(v, DELTA, "rdp") for run in (RUN_A, RUN_B) for v in run.values())


# --- (c) Papernot & Steinke ----------------------------------------------------------------------------------
def test_poisson_bound_is_the_theorem_on_privacys_rdp_curve() -> None:
    mu = 4.0
    q_op, q_dp = np.maximum(_worst_client(RUN_A), _worst_client(RUN_B))  # Q: max over trials and clients
    eps_hat = np.log1p(1.0 / (ORDERS - 1.0))
    ledgers = [v for run in (RUN_A, RUN_B) for v in run.values()]
    delta_hat = np.array([max(delta_for_epsilon(v, float(e), "pld") for v in ledgers) for e in eps_hat])
    shift = mu * delta_hat + math.log(mu) / (ORDERS - 1.0)
    by_hand = _to_epsilon(q_op + shift, q_dp + shift)
    bound = tuning.random_search_epsilon([RUN_A, RUN_B], [], DELTA, "poisson", mu)
    assert bound == pytest.approx(by_hand, rel=1e-9)
    assert bound > max(epsilon(v, DELTA, a) for v in ledgers for a in ("pld", "rdp"))
    # a run outside the K trials is added by plain RDP composition of its worst client
    extra_op, extra_dp = _worst_client(RUN_B)
    with_extra = tuning.random_search_epsilon([RUN_A, RUN_B], [RUN_B], DELTA, "poisson", mu)
    assert with_extra == pytest.approx(_to_epsilon(q_op + shift + extra_op, q_dp + shift + extra_dp), rel=1e-9)


def test_tnb_bound_is_theorem_2_on_privacys_rdp_curve() -> None:
    eta, mean = 0.5, 5.0
    gamma = tuning.tnb_gamma_for_mean(eta, mean)
    assert tuning.tnb_mean(eta, gamma) == pytest.approx(mean, rel=1e-9)
    q_op, q_dp = np.maximum(_worst_client(RUN_A), _worst_client(RUN_B))

    def theorem(q: np.ndarray) -> np.ndarray:
        best = min((1 + eta) * (1 - 1 / lh) * q[j] + (1 + eta) * math.log(1 / gamma) / lh
                   for j, lh in enumerate(ORDERS) if math.isfinite(q[j]))
        return np.array([q[i] + best + math.log(mean) / (lam - 1) for i, lam in enumerate(ORDERS)])

    bound = tuning.random_search_epsilon([RUN_A, RUN_B], [], DELTA, "truncated-negative-binomial", mean, eta)
    assert bound == pytest.approx(_to_epsilon(theorem(q_op), theorem(q_dp)), rel=1e-9)
    ledgers = [v for run in (RUN_A, RUN_B) for v in run.values()]
    assert bound > max(epsilon(v, DELTA, a) for v in ledgers for a in ("pld", "rdp"))


def _gaussian_delta(eps: float, sigma: float) -> float:
    """delta(eps) of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018), by hand."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    mu = 1.0 / sigma
    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


def test_poisson_bound_matches_a_hand_computation() -> None:
    sigma, mu, lam = 2.0, 5.0, 10.0
    release = [DpSgdRelease(sigma, 1.0, 1)]  # one Gaussian mechanism: RDP(lambda) = lambda / (2 sigma^2)
    op, dp = tuning.ledger_rdp(release)
    i = list(ORDERS).index(lam)
    assert op[i] == pytest.approx(lam / (2 * sigma**2)) and dp[i] == pytest.approx(op[i])
    eps_hat = math.log(1 + 1 / (lam - 1))
    hand = lam / (2 * sigma**2) + mu * _gaussian_delta(eps_hat, sigma) + math.log(mu) / (lam - 1)
    assert hand == pytest.approx(2.2154, abs=2e-4)  # worked out on paper: 1.25 + 5 x 0.15732 + log(5)/9
    exact_delta = np.array([_gaussian_delta(float(e), sigma) for e in tuning.poisson_eps_hat()])
    assert tuning.poisson_rdp(op, exact_delta, mu)[i] == pytest.approx(hand, rel=1e-9)
    # the bound takes delta_hat from the PLD: it agrees with the closed form
    pld = tuning.pld_delta_hat(release, tuning.poisson_eps_hat())
    assert pld[i] == pytest.approx(_gaussian_delta(eps_hat, sigma), rel=1e-3)
    eps = tuning.random_search_epsilon([{"client-000": release}], [], DELTA, "poisson", mu)
    exact = tuning.poisson_rdp(op, exact_delta, mu)
    assert eps == pytest.approx(_to_epsilon(exact, exact), rel=1e-3)
    assert eps <= hand + math.log(1 / DELTA) / (lam - 1) + 1e-9  # the conversion at lambda = 10 bounds it


def test_tnb_bound_matches_a_hand_computation() -> None:
    sigma, eta, gamma, lam = 2.0, 1.0, 0.2, 10.0  # geometric, E[K] = 5
    op, _ = tuning.ledger_rdp([DpSgdRelease(sigma, 1.0, 1)])
    out = tuning.tnb_rdp(op, eta, gamma)
    # min over lambda_hat of (1+eta)(1-1/l) l/8 + (1+eta) log(1/gamma)/l = (l-1)/4 + 2 log 5 / l: at l = 3.6
    hand = lam / 8 + (3.6 - 1) / 4 + 2 * math.log(5) / 3.6 + math.log(5) / (lam - 1)
    assert out[list(ORDERS).index(lam)] == pytest.approx(hand, rel=1e-9)
    assert hand == pytest.approx(2.9730, abs=1e-3)


def test_bad_inputs_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="plain composition"):
        tuning.random_search_epsilon([RUN_A], [], DELTA, "fixed", 3)
    with pytest.raises(ValueError, match="mean > 1"):
        tuning.tnb_gamma_for_mean(1.0, 1.0)
    with pytest.raises(ValueError, match="delta"):
        tuning.rdp_composed_epsilon([RUN_A], 0.0)


# --- the sweep's path: a synthetic sweep directory ---------------------------------------------------------
BASE = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 3, "delta": DELTA}


def _write_run(path: Path, run: dict[str, list[DpSgdRelease]], *, accountant: str = "pld", seed: int = 1,
               dp: bool = True, deterministic: bool = False) -> None:
    """A run directory as a finished run leaves it: config.json, the clients' ledgers, summary.json."""
    path.mkdir(parents=True)
    config = {**BASE, "seed": seed, "dp": dp, "deterministic-noise": deterministic, "accountant": accountant,
              "resolved": {"delta": DELTA}}
    (path / "config.json").write_text(json.dumps(config))
    for client, releases in run.items():
        ledger = Ledger(path / "ledgers" / f"{client}.jsonl")
        for n, r in enumerate(releases, start=1):
            ledger.append(r, delta=DELTA, accountant=accountant, epsilon=epsilon(releases[:n], DELTA, accountant))
    (path / "summary.json").write_text(json.dumps({"rounds_completed": len(next(iter(run.values())))}))
    (path / "metrics.jsonl").write_text("")


def _tuning(out: Path, data: dict) -> accounting.Tuning:
    spec = spec_from_dict(data)
    return accounting.compute_tuning(out, spec, expand(spec, trials=2 if spec.random else None), [], trials=2)


def test_the_sweep_composes_what_its_directory_holds(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs" / "a", RUN_A)
    _write_run(tmp_path / "runs" / "b", RUN_B, accountant="rdp")
    _write_run(tmp_path / "runs" / "baseline", RUN_A, dp=False)  # not private: never counted
    _write_run(tmp_path / "runs" / "seeded", RUN_B, deterministic=True)  # not private either
    _write_run(tmp_path / "attempts" / "c-1", RUN_B)  # an unfinished attempt: its releases were spent
    grid = {"base": BASE, "grid": {"noise-multiplier": [1.0, 1.5]}}
    result = _tuning(tmp_path, grid)
    assert result.private_runs == 3 and result.method == "pld+rdp-per-client" and result.delta == DELTA
    direct = max(epsilon(RUN_A[c] + RUN_B[c] + RUN_B[c], DELTA, a) for c in RUN_A for a in ("pld", "rdp"))
    assert result.epsilon == pytest.approx(direct, rel=1e-12)
    assert any("different accountants" in n for n in result.notes)
    assert any("1 earlier unfinished attempt" in n for n in result.notes)


def test_the_sweep_uses_rdp_across_partitions_and_the_random_search_bound(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs" / "a", RUN_A, seed=1)
    _write_run(tmp_path / "runs" / "b", RUN_B, seed=2)  # another seed: another partition
    result = _tuning(tmp_path, {"base": BASE, "grid": {"seed": [1, 2]}})
    a_op, a_dp = _worst_client(RUN_A)
    b_op, b_dp = _worst_client(RUN_B)
    assert result.method == "rdp-max-per-run"
    assert result.epsilon == pytest.approx(_to_epsilon(a_op + b_op, a_dp + b_dp), rel=1e-12)
    # the same directory as a random search whose planned trials are not these runs: all are "extra"
    random = {"base": BASE, "random": {"trials": 3, "distribution": "truncated-negative-binomial",
                                       "learning-rate": {"low": 0.01, "high": 0.1}}}
    result = _tuning(tmp_path, random)
    assert result.method == "papernot-steinke-tnb" and any("outside the K trials" in n for n in result.notes)
    expected = tuning.random_search_epsilon([], [RUN_A, RUN_B], DELTA, "truncated-negative-binomial", 3.0)
    assert result.epsilon == pytest.approx(expected, rel=1e-12)


def test_an_unreadable_ledger_stops_the_accounting(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs" / "a", RUN_A)
    (tmp_path / "runs" / "a" / "ledgers" / "client-1.jsonl").write_text('{"round": 1, "mech')  # torn
    with pytest.raises(Exception, match="client-1.jsonl could not be read"):
        accounting.private_runs(tmp_path)
