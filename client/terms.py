"""What a client agrees to release in a run, decided on its own machine from its own policy and ledger.

The server's run config proposes dp, sigma (or a target epsilon), delta, accountant and relation; the
client computes its own sigma from the schedule, checks the proposal against its owner's policy, and
states its terms: the release one round makes, how many rounds it will take part in before a budget
stops it, and what its records spent in earlier runs. A proposal that breaks the policy is declined
here, before anything trains; every train instruction is checked again, since the server may change it.
"""

from __future__ import annotations

import logging

from dpfl.client.settings import ClientSettings
from dpfl.privacy import DpSgdRelease, Ledger, Release, calibrate_noise, check_budget, epsilon, steps_per_round, wire
from dpfl.privacy.owner_policy import OwnerPolicy, RunRequest, policy_violations

log = logging.getLogger("dpfl.client")


class Declined(Exception):
    """The client will not train on this instruction; ``code`` is the wire error code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def noise_multiplier_for(settings: ClientSettings, declared: int, delta: float) -> float:
    """sigma for this client: the configured one, or calibrated so that the client ends at target-epsilon
    after the most rounds it may take part in (no amplification from being sampled as a client: the server
    knows who took part)."""
    policy = settings.policy
    if policy.target_epsilon <= 0:
        return settings.noise_multiplier
    q, steps = steps_per_round(declared, settings.batch_size, settings.local_epochs)
    return calibrate_noise(policy.target_epsilon, delta, q, steps, policy.participation_cap,
                           accountant=policy.accountant, neighbouring=settings.neighbouring)


def plan_round(settings: ClientSettings, owner: OwnerPolicy | None, declared: int, delta: float,
               client_id: str) -> DpSgdRelease | None:
    """This run's per-round release (None: dp = false), or Declined when the owner's policy forbids the
    proposal."""
    run = settings.policy
    sigma = noise_multiplier_for(settings, declared, delta) if run.dp else 0.0
    if owner is not None:
        request = RunRequest(dp=run.dp, deterministic_noise=run.deterministic_noise,
                             private_metrics=run.private_metrics or run.client_evaluation, delta=delta,
                             accountant=run.accountant, neighbouring=settings.neighbouring, noise_multiplier=sigma,
                             declared_records=declared)
        broken = policy_violations(owner, request)
        if broken:
            raise Declined(wire.POLICY_DECLINED, f"{client_id}: declined by its privacy policy: " + "; ".join(broken))
    if not run.dp:
        return None
    q, steps = steps_per_round(declared, settings.batch_size, settings.local_epochs)
    return DpSgdRelease(noise_multiplier=sigma, sample_rate=q, steps=steps)


def split_by_run(ledger: Ledger, run: str) -> tuple[list[Release], list[Release]]:
    """(releases of ``run``, releases of earlier runs) in a ledger that may hold both; an entry without a
    run counts as this run's."""
    mine: list[Release] = []
    earlier: list[Release] = []
    for release, entry in zip(ledger.releases, ledger.entries, strict=True):
        (mine if entry.get("run", run) == run else earlier).append(release)
    return mine, earlier


def _check_relation(ledger: Ledger, relation: str, client_id: str) -> None:
    other = {str(e.get("neighbouring", "add-remove")) for e in ledger.entries} - {relation}
    if other:
        raise Declined(wire.POLICY_DECLINED,
                       f"{client_id}: the ledger of these records is accounted under {', '.join(sorted(other))}; "
                       f"this run asks {relation}: epsilons under different relations do not compose here, "
                       "so run under the ledger's relation")


def budget_verdict(settings: ClientSettings, owner: OwnerPolicy | None, ledger: Ledger, run: str,
                   release: DpSgdRelease, delta: float, client_id: str) -> None:
    """Declined when one more ``release`` would break the run's budget (this run's releases) or the owner's
    max-epsilon (every release of these records, earlier runs included)."""
    _check_relation(ledger, settings.neighbouring, client_id)
    accountant, relation = settings.policy.accountant, settings.neighbouring
    if settings.policy.budget > 0:
        verdict = check_budget(split_by_run(ledger, run)[0], release, delta, settings.policy.budget, accountant,
                               neighbouring=relation)
        if not verdict.allowed:
            raise Declined(wire.BUDGET_EXHAUSTED, f"{client_id}: {verdict.reason}")
    if owner is not None:
        verdict = check_budget(ledger.releases, release, delta, owner.max_epsilon, accountant, neighbouring=relation)
        if not verdict.allowed:
            raise Declined(wire.BUDGET_EXHAUSTED, f"{client_id}: its owner's max-epsilon {owner.max_epsilon:g} over "
                                                  f"every run on these records: {verdict.reason}")


def paid_from(ledger: Ledger, run: str, server_round: int) -> int:
    """How many of this run's releases are for round ``server_round`` or later: rounds this client already paid
    for that a resumed server will ask for again (they are re-sent, not paid again; client/resend.py)."""
    return sum(1 for e in ledger.entries if e.get("run", run) == run and int(e.get("round", 0)) >= server_round)


def max_rounds(settings: ClientSettings, owner: OwnerPolicy | None, ledger: Ledger, run: str,
               release: DpSgdRelease | None, delta: float, server_round: int = 1) -> int:
    """How many more rounds of ``release`` this client accepts in this run, from ``server_round`` on: the
    rounds it already paid for from there (re-sent for free), plus the new releases that fit (bisection on
    the count: epsilon grows with every release)."""
    mine, _ = split_by_run(ledger, run)
    everything = ledger.releases
    ahead = paid_from(ledger, run, server_round)
    cap = settings.policy.participation_cap - len(mine)
    if release is None or cap <= 0:
        return ahead + max(cap, 0)
    accountant, relation = settings.policy.accountant, settings.neighbouring

    def fits(k: int) -> bool:
        if k == 0:
            return True
        more = [release] * k
        if settings.policy.budget > 0 and epsilon([*mine, *more], delta, accountant,
                                                  neighbouring=relation) > settings.policy.budget:
            return False
        return owner is None or epsilon([*everything, *more], delta, accountant,
                                        neighbouring=relation) <= owner.max_epsilon

    if fits(cap):
        return ahead + cap
    lo, hi = 0, cap  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return ahead + lo


def prior_runs(ledger: Ledger, run: str) -> tuple[str, ...]:
    """Earlier runs on these records, in the order they first appear in the ledger."""
    return tuple(dict.fromkeys(str(e["run"]) for e in ledger.entries if e.get("run", run) != run))


def prior_epsilon(ledger: Ledger, run: str, delta: float, accountant: str, relation: str) -> float:
    _, earlier = split_by_run(ledger, run)
    return epsilon(earlier, delta, accountant, neighbouring=relation) if earlier else 0.0
