"""The privacy cost of choosing a result from a sweep: its private runs on disk, the tuning ε, the statement.

The math is ``dpfl.privacy.tuning``'s; this module finds the runs (through ``dpfl.privacy.rundata``),
decides which bound applies and words the guarantee the report prints.

Every private run in the directory counts: all points, earlier unfinished attempts (their releases were
spent) and points from earlier versions of the sweep file. A grid (or a fixed number of trials) composes
them; a random search with a random number of trials uses Papernot & Steinke (ICLR 2022).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpfl.privacy import DEFAULT_ACCOUNTANT, Release, tuning
from dpfl.privacy.policy import is_not_private
from dpfl.privacy.rundata import read_config
from dpfl.simulations.sweeps.results import read_ledgers, select
from dpfl.simulations.sweeps.spec import PRIVACY_KEYS, Point, SweepSpec, is_privacy_axis, partition_id
from dpfl.simulations.sweeps.store import ATTEMPTS, RUNS


@dataclass
class PrivateRun:
    """One private run found on disk, with what its tuning accounting needs."""

    path: Path
    point_id: str  # the run directory name without an attempt suffix
    delta: float
    accountant: str  # the accountant its ledgers were kept with (config.json "accountant")
    partition: str  # runs with equal values hold the same records at each client (spec.partition_id)
    ledgers: dict[str, list[Release]]  # client -> its sample-level releases
    attempt: bool  # an earlier, unfinished attempt (moved to attempts/)


def private_runs(out: Path) -> list[PrivateRun]:
    """Every private run in the sweep directory that released anything, earlier attempts included."""
    found: list[PrivateRun] = []
    for parent, attempt in ((out / RUNS, False), (out / ATTEMPTS, True)):
        if not parent.is_dir():
            continue
        for run in sorted(p for p in parent.iterdir() if p.is_dir()):
            cfg = read_config(run)
            if cfg is None or is_not_private(bool(cfg.get("dp", False)), bool(cfg.get("deterministic-noise", False))):
                continue
            ledgers = read_ledgers(run)
            if not ledgers:
                continue
            delta = float((cfg.get("resolved") or {}).get("delta") or cfg.get("delta") or 0.0)
            name = run.name.rsplit("-", 1)[0] if attempt else run.name
            found.append(PrivateRun(run, name, delta, str(cfg.get("accountant") or DEFAULT_ACCOUNTANT),
                                    partition_id(cfg), ledgers, attempt))
    return found


@dataclass
class Tuning:
    """The privacy cost of choosing a result from this sweep (tuning.json, and the report's statement)."""

    method: str
    epsilon: float | None
    delta: float | None
    private_runs: int
    statement: str
    notes: list[str] = field(default_factory=list)
    selected: str | None = None  # point id of the selected result
    selected_epsilon_alone: float | None = None
    trials: int | None = None
    distribution: str | None = None
    mean_trials: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_tuning_epsilon(runs: Sequence[PrivateRun], delta: float) -> tuple[float, str, list[str]]:
    """epsilon of anything chosen from these runs, the method's name and notes: their composition, max over
    clients.

    When every run splits the records over clients the same way (same data, partition and seed), a client
    is the same set of records in every run: each client's releases across all runs are composed by the
    runs' own accountant. Otherwise a record may sit at different clients in different runs; RDP then
    bounds it soundly: sum over runs of the per-order max over that run's clients."""
    if not runs:
        return 0.0, "none", []
    ledgers = [r.ledgers for r in runs]
    if len({r.partition for r in runs}) == 1:
        accountants = sorted({r.accountant for r in runs})
        clients = len({c for r in runs for c in r.ledgers})
        note = (f"composed {len(runs)} private runs per client with the runs' accountant "
                f"({', '.join(accountants)}), as their ledgers are; max over {clients} clients")
        if len(accountants) > 1:
            note += "; the runs used different accountants, so the largest epsilon over them is taken"
        return tuning.composed_epsilon(ledgers, delta, accountants), f"{'+'.join(accountants)}-per-client", [note]
    return tuning.rdp_composed_epsilon(ledgers, delta), "rdp-max-per-run", [
        f"the {len(runs)} private runs do not split records over clients the same way (data, partition or "
        "seed differ), so each run contributes its worst client per RDP order; RDP composition (Opacus' and "
        "dp-accounting's), then the larger of their conversions to (epsilon, delta)"]


def random_tuning_epsilon(trial_runs: Sequence[PrivateRun], extra_runs: Sequence[PrivateRun], delta: float,
                          distribution: str, mean: float, eta: float) -> tuple[float, str, list[str]]:
    """Papernot & Steinke for the K trials (Q's RDP and delta_hat: max over trials and clients), plus plain
    RDP composition for any run outside the K trials (reruns of failed trials, points no longer planned)."""
    eps = tuning.random_search_epsilon([r.ledgers for r in trial_runs], [r.ledgers for r in extra_runs], delta,
                                       distribution, mean, eta)
    if distribution == "poisson":
        method = "papernot-steinke-poisson"
        notes = [f"K ~ Poisson({mean:g}) trials; Q's RDP and delta_hat (from the PLD) are the max over the "
                 "trials run and their clients"]
    else:
        gamma = tuning.tnb_gamma_for_mean(eta, mean)
        method = "papernot-steinke-tnb"
        notes = [f"K ~ truncated negative binomial (eta={eta:g}, gamma={gamma:.4g}, E[K]={mean:g}); Q's RDP is "
                 "the max over the trials run and their clients"]
    if extra_runs:
        notes.append(f"{len(extra_runs)} private run(s) outside the K trials (reruns of failed trials or "
                     "points no longer planned) are added by RDP composition")
    return eps, method, notes


def _statement(tuning_: Tuning, chosen: Mapping[str, Any] | None, what: str) -> str:
    eps, delta = tuning_.epsilon, tuning_.delta
    if chosen is None:
        return (f"No private point finished, so nothing is selected; the sweep still spent "
                f"epsilon = {eps:.3f} at delta = {delta:.3g} ({what}).")
    alone = chosen["epsilon"]
    alone_text = f"{alone:.3f}" if isinstance(alone, int | float) else "n/a"
    return (f"The selected model (point {chosen['id']}, chosen by server-side test accuracy) is "
            f"(epsilon = {eps:.3f}, delta = {delta:.3g})-DP for each record (sample level, max over "
            f"clients): {what}. Its own run alone has epsilon = {alone_text}, which does NOT account for the "
            "selection. The non-private baselines are references only: they are never candidates, carry no "
            "guarantee and must not be released.")


def compute_tuning(out: Path, spec: SweepSpec, points: Sequence[Point], rows: Sequence[Mapping[str, Any]],
                   *, trials: int | None) -> Tuning:
    """The tuning epsilon of the sweep in ``out`` and who is selected, with the statement to print."""
    runs = private_runs(out)
    chosen = select(rows)
    deltas = [r.delta for r in runs if r.delta > 0]
    delta = spec.tuning_delta or (min(deltas) if deltas else None)
    result = Tuning(method="none", epsilon=None, delta=delta, private_runs=len(runs), statement="",
                    selected=chosen["id"] if chosen else None,
                    selected_epsilon_alone=chosen["epsilon"] if chosen else None, trials=trials,
                    distribution=spec.random.distribution if spec.random else None,
                    mean_trials=spec.random.trials if spec.random else None)
    if not runs or delta is None:
        result.statement = "No private run released anything: there is no privacy cost and nothing to select."
        return result
    if spec.random is not None and spec.random.distribution != "fixed":
        planned = {p.id for p in points if p.kind == "private" and p.valid}
        trial_runs = [r for r in runs if not r.attempt and r.point_id in planned]
        extra = [r for r in runs if r not in trial_runs]
        eps, method, notes = random_tuning_epsilon(trial_runs, extra, delta, spec.random.distribution,
                                                   spec.random.trials, spec.random.eta)
        privacy_random = sorted((set(spec.random.params) & PRIVACY_KEYS)
                                | {k for k, v in spec.grid.items() if is_privacy_axis(k, v)})
        if privacy_random:
            notes.append(f"{', '.join(privacy_random)} is drawn at random: the bound takes Q's privacy as "
                         "the least private trial that ran; a draw that did not happen could have been less "
                         "private")
        what = f"the random-search bound of Papernot & Steinke (2022) over K = {trials} trial(s)"
    else:
        eps, method, notes = grid_tuning_epsilon(runs, delta)
        what = f"composition over all {len(runs)} private runs of the grid"
    result.method, result.epsilon, result.notes = method, eps, notes
    earlier = sum(r.attempt for r in runs)
    if earlier:
        result.notes.append(f"{earlier} earlier unfinished attempt(s) are included: their releases were "
                            "spent")
    result.statement = _statement(result, chosen, what)
    return result
