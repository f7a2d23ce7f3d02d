"""User-level DP-FedAvg (``privacy-unit = client``): the mechanism, its accounting and a real federation.

The ε in ``ledgers/server.jsonl`` is recomputed by dp-accounting from that file alone; the client clips on its
own machine and the server refuses an update longer than C; adaptive clipping moves C toward the target
quantile on known update norms, and its count's noise is inside the booked release (the joint Gaussian of
update sum and count is exactly one Gaussian with the effective noise multiplier, sampled once).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch

from dpfl.client.user_clip import clip_update, update_norm
from dpfl.privacy.secure_random import SecureRandom
from dpfl.server.user_level import UserLevelError, UserLevelMechanism, UserLevelSettings, update_noise_multiplier

ROOT = Path(__file__).resolve().parents[1]


def _pld(events: list[dp_accounting.DpEvent], delta: float) -> float:
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def _settings(**kw: object) -> UserLevelSettings:
    base = {"population": 200, "sample_rate": 0.25, "noise_multiplier": 1.2, "clip_norm": 1.0, "delta": 1e-5,
            "accountant": "pld"}
    return UserLevelSettings(**{**base, **kw})  # type: ignore[arg-type]


def _fixed_rng(seed: int = 0) -> SecureRandom:
    return SecureRandom(key=bytes([seed]) * 32, nonce=bytes(16))


# -- the mechanism ------------------------------------------------------------------------------------------
def test_the_effective_noise_multiplier_is_the_joint_gaussian_sampled_once() -> None:
    z_update, count_std = 1.3, 4.0
    z = (z_update ** -2 + (2 * count_std) ** -2) ** -0.5
    assert update_noise_multiplier(z, count_std) == pytest.approx(z_update, rel=1e-12)
    # unsampled: the update sum (sensitivity C, noise z_update C) and the centred count (sensitivity 1/2, noise
    # count_std) composed are exactly one Gaussian with multiplier z
    joint = _pld([dp_accounting.GaussianDpEvent(z_update), dp_accounting.GaussianDpEvent(2 * count_std)], 1e-5)
    assert joint == pytest.approx(_pld([dp_accounting.GaussianDpEvent(z)], 1e-5), rel=2e-3)
    # Poisson-sampled: both are computed on the same cohort, so the sound event samples once around both.
    # dp-accounting's RDP accountant takes that event and finds the same effective multiplier z (PLD has no
    # event for it); composing two separately sampled events would claim amplification twice and understate ε
    q = 0.1
    once = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_update), dp_accounting.GaussianDpEvent(2 * count_std)])), 50)
    booked = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), 50)
    orders = [1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
    rdp_once = dp_accounting.rdp.RdpAccountant(orders).compose(once).get_epsilon(1e-5)
    rdp_booked = dp_accounting.rdp.RdpAccountant(orders).compose(booked).get_epsilon(1e-5)
    assert rdp_once == pytest.approx(rdp_booked, rel=1e-9)
    apart = _pld([dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent([
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z_update)),
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(2 * count_std))]), 50)], 1e-5)
    assert apart < _pld([booked], 1e-5)  # what a double-amplified (unsound here) composition would claim
    with pytest.raises(UserLevelError, match="clipped-count-stddev"):
        update_noise_multiplier(2.0, 0.9)


def test_poisson_cohorts_vary_and_have_rate_q() -> None:
    mech = UserLevelMechanism(_settings(sample_rate=0.1), None, rng=_fixed_rng(1))
    sizes = [len(mech.sample(list(range(1000)))) for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(100, rel=0.03) and len(set(sizes)) > 10
    assert np.std(sizes) == pytest.approx(math.sqrt(1000 * 0.1 * 0.9), rel=0.25)


def test_the_noised_mean_divides_by_the_expected_cohort_and_adds_z_c_noise() -> None:
    s = _settings(population=400, sample_rate=0.25, noise_multiplier=2.0, clip_norm=0.5)
    mech = UserLevelMechanism(s, None, rng=_fixed_rng(2))
    ones = [np.full((50_000,), 0.01)] * 7
    out = mech.noised_mean([[u] for u in ones], [True] * 7, [(50_000,)])[0]
    assert out.mean() == pytest.approx(7 * 0.01 / 100, abs=4e-4)  # sum / (q N), not / 7
    assert out.std() == pytest.approx(2.0 * 0.5 / 100, rel=0.02)
    only_noise = mech.noised_mean([], [], [(50_000,)])[0]  # an empty cohort releases noise, not "nobody came"
    assert only_noise.std() == pytest.approx(0.01, rel=0.02)


def test_adaptive_clipping_moves_c_toward_the_target_quantile() -> None:
    """Known update norms uniform on [0, 10]: the median is 5, the 0.8 quantile 8; C starts far away."""
    norms = np.linspace(0, 10, 101)[1:]
    for quantile, start, want in ((0.5, 0.1, 5.0), (0.8, 40.0, 8.0)):
        s = _settings(population=100, sample_rate=1.0, noise_multiplier=1.0, clip_norm=start, adaptive=True,
                      target_quantile=quantile, clip_learning_rate=0.2, count_stddev=5.0)
        mech = UserLevelMechanism(s, None, rng=_fixed_rng(3))
        history = []
        for _ in range(300):
            mech._adapt([bool(n <= mech.clip_norm) for n in norms])
            history.append(mech.clip_norm)
        assert np.median(history[-100:]) == pytest.approx(want, rel=0.12), quantile
        assert mech.z_update > s.noise_multiplier  # the count's share of the release


def test_the_server_ledger_books_before_use_reuses_an_interrupted_charge_and_stops_at_the_budget(
        tmp_path: Path) -> None:
    path = tmp_path / "ledgers" / "server.jsonl"
    path.parent.mkdir()
    s = _settings(budget=5.0)
    mech = UserLevelMechanism(s, path, run="r")
    eps = [mech.charge(r) for r in (1, 2, 3)]
    assert eps == sorted(eps) and len(path.read_text().splitlines()) == 3
    again = UserLevelMechanism(s, path, run="r")  # a resumed run re-runs round 3: the charge is not booked twice
    assert again.charge(3) == eps[-1] and len(again.ledger.entries) == 3
    stop_round = next(r for r in range(4, 400) if again.over_budget(r) or not again.charge(r))
    assert "user-epsilon-budget" in again.over_budget(stop_round) and 4.5 < again.epsilon <= 5.0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.2)), len(rows))
    assert rows[-1]["epsilon"] == pytest.approx(_pld([event], 1e-5), rel=0.01)


def test_the_client_clips_its_whole_update_and_keeps_counters() -> None:
    incoming = {"w": torch.zeros(3, 4), "b": torch.zeros(4), "steps": torch.tensor(5)}
    trained = {"w": torch.full((3, 4), 2.0), "b": torch.ones(4), "steps": torch.tensor(99)}
    clipped, within = clip_update(incoming, trained, 1.5)
    assert not within and update_norm(incoming, clipped) == pytest.approx(1.5, rel=1e-6)
    assert int(clipped["steps"]) == 5  # a counter is not part of the update
    small = {"w": torch.full((3, 4), 0.01), "b": torch.zeros(4), "steps": torch.tensor(5)}
    same, within = clip_update(incoming, small, 1.5)
    assert within and torch.equal(same["w"], small["w"])


# -- a federation -------------------------------------------------------------------------------------------
FLAGS = ["--privacy-unit", "client", "--dataset", "digits", "--model", "mlp", "--num-clients", "40",
         "--fraction-train", "0.25", "--num-server-rounds", "6", "--dp", "false", "--batch-size", "16",
         "--learning-rate", "0.2", "--user-target-epsilon", "4", "--user-delta", "1e-4", "--user-clip-norm", "0.5",
         "--min-train-clients", "1", "--seed", "5"]


def _simulate(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", *FLAGS,
                           "--run-dir", str(tmp), "--run-name", "u", *extra], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("user-level")
    proc = _simulate(tmp, "--adaptive-clipping", "true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "u"


def test_a_user_level_federation_is_reproduced_from_its_server_ledger_alone(user_run: Path) -> None:
    rows = [json.loads(line) for line in (user_run / "ledgers" / "server.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert {r["mechanism"] for r in rows} == {"gaussian"} and {r["privacy_unit"] for r in rows} == {"client"}
    for i, row in enumerate(rows, start=1):  # every line's epsilon, from the file's own fields
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            row["sample_rate"], dp_accounting.GaussianDpEvent(row["noise_multiplier"])), i)
        assert row["epsilon"] == pytest.approx(_pld([event], row["delta"]), rel=0.01)
    assert rows[-1]["epsilon"] <= 4.0 and rows[0]["sample_rate"] == 0.25 and rows[0]["delta"] == 1e-4
    assert rows[0]["clip_norm"] == 0.5 and len({r["clip_norm"] for r in rows}) > 1  # adaptive C moved
    assert not list((user_run / "ledgers").glob("client-*.jsonl"))  # dp = false: no record-level releases
    summary = json.loads((user_run / "summary.json").read_text())
    assert summary["privacy_unit"] == "client" and summary["user_epsilon"] == rows[-1]["epsilon"]
    assert summary["expected_cohort"] == 10 and not summary["not_private"]


def test_the_cohort_is_not_published(user_run: Path) -> None:
    for line in (user_run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["participants"] is None and row["expected_cohort"] == 10 and row["events"] == []
        assert row["user_epsilon"] > 0
    summary = json.loads((user_run / "summary.json").read_text())
    assert all(e["round"] <= 0 for c in summary["clients"].values() for e in c["events"])
    assert len({c["participations"] for c in summary["clients"].values()}) == 1  # every client charged alike
    report = (user_run / "report" / "report.md").read_text()
    assert "user-level" in report.lower() and "expected cohort" in report.lower()
    assert json.loads((user_run / "report" / "report.json").read_text())["accounting_ok"]


def test_a_user_level_budget_stops_the_run_before_it_is_exceeded(tmp_path: Path) -> None:
    proc = _simulate(tmp_path, "--user-target-epsilon", "0", "--user-noise-multiplier", "2.0",
                     "--user-epsilon-budget", "1.5", "--num-server-rounds", "30")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "u" / "ledgers" / "server.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["epsilon"] <= 1.5 and len(rows) < 30
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert "user-epsilon-budget" in summary["stop_reason"] and summary["rounds_completed"] == len(rows)


@pytest.mark.parametrize(("flags", "needle"), [
    (["--max-participations", "2"], "max-participations"),
    (["--adaptive-clipping", "true", "--clipped-count-stddev", "0.1"], "clipped-count-stddev"),
    (["--user-target-epsilon", "0", "--user-epsilon-budget", "0.5"], "one round"),
    (["--user-target-epsilon", "0.0001"], "user-target-epsilon"),
])
def test_user_level_settings_that_break_the_mechanism_are_refused(flags: list[str], needle: str,
                                                                   tmp_path: Path) -> None:
    proc = _simulate(tmp_path, *flags)
    assert proc.returncode == 2 and needle in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert not (tmp_path / "u" / "ledgers").exists()


def test_a_truncated_server_ledger_cannot_be_resumed(user_run: Path, tmp_path: Path) -> None:
    """The checkpoint records ledgers/server.jsonl's length and head like every server ledger: a rolled-back
    user-level ledger is refused by resume, never continued from."""
    import shutil

    from dpfl.server.resume import ResumeError, check_resumable
    from dpfl.server.rundir import RunDirectory

    copy = tmp_path / "u"
    shutil.copytree(user_run, copy)
    checkpoint = check_resumable(RunDirectory(copy))
    assert checkpoint is not None and checkpoint.state["ledger_heads"]["server"][0] == 6
    assert checkpoint.state["user_level"]["clip_norm"] > 0
    ledger = copy / "ledgers" / "server.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ResumeError, match="server"):
        check_resumable(RunDirectory(copy))


def test_with_both_units_the_record_level_ledgers_do_not_show_the_cohort(tmp_path: Path) -> None:
    """dp = true as well: every client's server-side record-level ledger is charged every round, sampled or not
    (conservative: the server's epsilon is never below the client's), so neither the ledgers nor the epsilon per
    client in metrics.jsonl say who was in a round's cohort."""
    proc = _simulate(tmp_path, "--dp", "true", "--num-server-rounds", "3", "--num-clients", "12",
                     "--fraction-train", "0.3", "--user-target-epsilon", "6", "--user-delta", "1e-3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "u"
    ledgers = sorted((run / "ledgers").glob("client-*.jsonl"))
    assert len(ledgers) == 12
    assert {len(p.read_text().splitlines()) for p in ledgers} == {3}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        assert len(set(json.loads(line)["epsilon"].values())) == 1
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["accounting_ok"], report["verdict"]


def test_fixed_size_cohorts_are_exact_and_accounted_under_replace_one_with_rdp(tmp_path: Path) -> None:
    """client-sampling = fixed: exactly q N clients each round (never published), booked as a sampled-without-
    replacement Gaussian under replace-one (sensitivity 2C: dp-accounting gets std / 2C); every line's epsilon
    equals dp-accounting's RDP of the file alone, and sits near the Poisson run's replace-one PLD of twice the
    sensitivity, not at its add/remove epsilon."""
    mech = UserLevelMechanism(_settings(population=200, sample_rate=0.25, sampling="fixed"), None, rng=_fixed_rng(4))
    cohorts = [mech.sample(list(range(200))) for _ in range(50)]
    assert {len(c) for c in cohorts} == {50} and len({tuple(c) for c in cohorts}) == 50
    assert mech.sample(list(range(30))) == list(range(30))  # fewer candidates than the cohort: all of them
    proc = _simulate(tmp_path, "--client-sampling", "fixed")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "u" / "ledgers" / "server.jsonl").read_text().splitlines()]
    assert {(r["mechanism"], r["neighbouring"], r["accountant"]) for r in rows} == {
        ("gaussian-fixed-cohort", "replace-one", "rdp")}
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
    acc = dp_accounting.rdp.RdpAccountant(orders, dp_accounting.NeighboringRelation.REPLACE_ONE)
    for row in rows:
        acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(
            row["population"], round(row["sample_rate"] * row["population"]),
            dp_accounting.GaussianDpEvent(row["noise_multiplier"] / 2)))  # replace-one moves the clipped sum by 2C
        assert row["epsilon"] == pytest.approx(acc.get_epsilon(row["delta"]), rel=1e-6)
    assert rows[-1]["epsilon"] <= 4.0
    report = json.loads((tmp_path / "u" / "report" / "report.json").read_text())
    assert report["accounting_ok"] and report["user_level"]["neighbouring"] == "replace-one"
    bad = _simulate(tmp_path / "bad", "--client-sampling", "fixed", "--fraction-train", "0.33")
    assert bad.returncode == 2 and "whole cohort" in bad.stderr


def test_tensorboard_shows_the_user_level_epsilon_and_no_cohort(user_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(user_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epsilon/user-level", "sigma/user-level", "clip-norm", "accuracy"} <= tags
    assert "participants" not in tags  # the cohort's size is not published
    ledger = [json.loads(line) for line in (user_run / "ledgers" / "server.jsonl").read_text().splitlines()]
    values = [e.value for e in events.Scalars("epsilon/user-level")]
    assert values == pytest.approx([r["epsilon"] for r in ledger], rel=1e-6)


def test_a_whole_population_cohort_is_the_gaussian_of_a_replaced_client() -> None:
    """q = 1: every client every round, no sampling left; replacing one client moves the clipped sum by up to 2C,
    so the epsilon is the Gaussian's at sensitivity 2 (noise multiplier z / 2), above the add/remove one's."""
    from dpfl.privacy import FixedCohortGaussianRelease
    from dpfl.privacy.calibration import FIXED_COHORT_RDP_ORDERS as RDP_ORDERS
    from dpfl.privacy.calibration import fixed_cohort_epsilon

    z = 3.0
    fixed = fixed_cohort_epsilon([FixedCohortGaussianRelease(z, 1.0, steps=10, population=50)], 1e-5)
    replaced = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS)).compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), 10)).get_epsilon(1e-5)
    removed = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS)).compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 10)).get_epsilon(1e-5)
    assert fixed == pytest.approx(replaced, rel=1e-9) and fixed > 1.8 * removed
