"""Scoring an audit run's canaries and bounding epsilon from the scores: what ``report/audit.json`` holds.

Gradient canaries (white-box): the auditor saw every client's released update (audit/observations.npz). A
canary's observation in a round is its owner's update at its coordinate, in units of C per step, minus the mean of
the other clients' updates at that coordinate that round (they hold no canary there, so their mean is the
auditor's estimate of the real records' gradient on it). With plain SGD the score is the sum over rounds of the
exact log-likelihood ratio of the claimed mechanism (privacy/audit/scores.py), with the control's variance added;
with momentum or Adam the update is no longer a plain sum of steps and the score is the sum of the observations.

Input canaries (black-box): only the final model; a canary's score is minus its loss under its (wrong) label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.privacy.audit.one_run import OneRunResult, one_run_audit
from dpfl.privacy.audit.scores import dirac_observations, planned_guesses, round_llr
from dpfl.privacy.rundata import RunData
from dpfl.simulations.audit.plan import AuditPlan

OBSERVATIONS = "audit/observations.npz"


class AuditScoreError(RuntimeError):
    """The run cannot be scored (no observations, no releases, no model); the message says why."""


@dataclass(frozen=True)
class ClaimedRound:
    """One client's release in one round, as its ledger states it."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    declared_records: int


@dataclass(frozen=True)
class Scores:
    scores: np.ndarray
    method: str
    auditor: str
    rounds_seen: int
    claimed: ClaimedRound | None  # the first release (for planning the guesses); None for input canaries


def _claimed_rounds(run: RunData) -> dict[tuple[str, int], ClaimedRound]:
    out = {}
    for client, ledger in run.ledgers.items():
        for e in ledger.entries:
            if e.get("mechanism") == "dp-sgd":  # the run directory's ledgers hold this run only
                out[(client, int(e["round"]))] = ClaimedRound(float(e["sample_rate"]), int(e["steps"]),
                                                              float(e["noise_multiplier"]),
                                                              int(e.get("declared_records") or 0))
    return out


def gradient_scores(run: RunData, plan: AuditPlan) -> Scores:
    path = run.path / OBSERVATIONS
    if not path.exists():
        raise AuditScoreError(f"{path} is missing: the audit run ended before the server saw any release")
    data = np.load(path, allow_pickle=False)
    values, rounds, sources = data["values"], data["rounds"], data["sources"].astype(str)
    cfg = run.config
    lr, clip = float(cfg["learning-rate"]), float(cfg["max-grad-norm"])
    exact = cfg.get("optimizer", "sgd") == "sgd" and float(cfg.get("momentum", 0.0)) == 0.0
    claimed = _claimed_rounds(run)
    owners = np.array([c.owner for c in plan.canaries])
    scores = np.zeros(len(plan.canaries))
    first: ClaimedRound | None = None
    for r in sorted(set(rounds.tolist())):
        rows = [i for i in np.flatnonzero(rounds == r) if (sources[i], r) in claimed]
        if not rows:
            continue
        releases = [claimed[(sources[i], r)] for i in rows]
        first = first or releases[0]
        y = np.stack([dirac_observations(values[i], learning_rate=lr, expected_batch=c.sample_rate *
                                         c.declared_records, clip_norm=clip) for i, c in zip(rows, releases,
                                                                                            strict=True)])
        noise_var = np.array([c.steps * c.noise_multiplier ** 2 for c in releases])
        for k, i in enumerate(rows):
            mine = owners == sources[i]
            others = [j for j in range(len(rows)) if j != k]
            own, c = y[k, mine], releases[k]
            control, control_var = 0.0, 0.0
            if others:
                control = y[others][:, mine].mean(axis=0)
                control_var = float(noise_var[others].sum()) / len(others) ** 2
            obs = own - control
            if exact and c.noise_multiplier > 0:
                sigma = math.sqrt((noise_var[k] + control_var) / c.steps)
                scores[mine] += round_llr(obs, c.sample_rate, c.steps, sigma)
            else:
                scores[mine] += obs
    if first is None:
        raise AuditScoreError(f"{run.path}: no client release was observed; nothing to score")
    method = ("sum over rounds of the likelihood ratio of the claimed mechanism (plain SGD), after subtracting the "
              "other clients' mean update at the canary's coordinate" if exact else
              "sum over rounds of the released update at the canary's coordinate, minus the other clients' mean "
              "(momentum or Adam: no exact likelihood)")
    auditor = ("white-box: every client update the server received, every round (the server is the auditor); "
               "each canary is a gradient C·e_j on one model coordinate, drawn with the records and clipped with them")
    return Scores(scores, method, auditor, len(set(rounds.tolist())), first)


def user_level_scores(run: RunData, plan: AuditPlan) -> Scores:
    """Crafted canary clients: each round's release is the server's noised mean; in units of C per client it is
    y = hits + z N(0, 1) (+ the real clients' updates at that coordinate), scored by the exact likelihood ratio."""
    path = run.path / OBSERVATIONS
    if not path.exists() or run.user_ledger is None:
        raise AuditScoreError(f"{run.path}: no user-level releases were observed (audit/observations.npz, "
                              "ledgers/server.jsonl)")
    data = np.load(path, allow_pickle=False)
    values, rounds = data["values"], data["rounds"]
    booked = {int(e["round"]): e for e in run.user_ledger.entries}
    scores = np.zeros(len(plan.canaries))
    first: ClaimedRound | None = None
    for row, r in zip(values, rounds.tolist(), strict=True):
        e = booked.get(int(r))
        if e is None:
            continue
        z, q = float(e["noise_multiplier"]), float(e["sample_rate"])
        first = first or ClaimedRound(q, 1, z, int(e.get("population") or 0))
        y = row * float(e["expected_cohort"]) / float(e["clip_norm"])
        scores += round_llr(y, q, 1, z)
    if first is None:
        raise AuditScoreError(f"{run.path}: no booked user-level release was observed; nothing to score")
    return Scores(scores, "sum over rounds of the likelihood ratio of the claimed user-level Gaussian (Poisson "
                          "cohort q, noise multiplier z) at the canary's coordinate of the noised mean",
                  "white-box: the server's noised mean update of every round (the user-level release); each canary "
                  "is a crafted client whose update is C·e_j on one model coordinate, drawn into the cohort like any "
                  "client", len(booked), first)


def input_scores(run: RunData, plan: AuditPlan, test_x: torch.Tensor, model: torch.nn.Module) -> Scores:
    x = test_x[[c.index for c in plan.canaries]]
    y = torch.tensor([c.label for c in plan.canaries], dtype=torch.long)
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    return Scores(-loss.double().numpy(), "minus the final model's loss on the canary's wrong label",
                  "black-box: the final model only; each canary is a test record with a wrong label", 0, None)


def choose_guesses(scores: Scores, m: int, delta: float, confidence: float, requested: int) -> tuple[int, int]:
    """(in, out) guesses: the user's ``--guesses`` (all "in"), else planned from the claimed mechanism (gradient
    canaries) or the top 10 % (input canaries). Never from the scores themselves."""
    if requested > 0:
        return min(requested, m), 0
    c = scores.claimed
    if c is None or c.noise_multiplier <= 0:
        return max(1, m // 10), 0
    return planned_guesses(m, rounds=max(scores.rounds_seen, 1), sample_rate=c.sample_rate, steps=c.steps,
                           noise_multiplier=c.noise_multiplier, delta=delta, confidence=confidence)


def audit_record(plan: AuditPlan, scores: Scores, result: OneRunResult, *, claimed_epsilon: float,
                 accountant: str, command: str, privacy_unit: str = "record") -> dict[str, Any]:
    """report/audit.json's content for one run."""
    assert plan.included is not None
    included = np.asarray(plan.included)
    bound = result.epsilon_lower_bound
    return {
        "schema": "dpfl-audit/1", "kind": plan.kind, "privacy_unit": privacy_unit, "neighbouring": "add-remove",
        "auditor": scores.auditor, "score": scores.method, "claimed_epsilon": claimed_epsilon,
        "accountant": accountant, "one_run": result.as_dict(),
        "verdict": "consistent" if bound <= claimed_epsilon else "violation",
        "scores_included": [float(v) for v in scores.scores[included]],
        "scores_excluded": [float(v) for v in scores.scores[~included]],
        "command": command,
    }


def one_run(scores: Scores, plan: AuditPlan, *, delta: float, confidence: float, requested: int) -> OneRunResult:
    assert plan.included is not None
    g_in, g_out = choose_guesses(scores, len(plan.canaries), delta, confidence, requested)
    return one_run_audit(scores.scores, np.asarray(plan.included), guesses_in=g_in, guesses_out=g_out, delta=delta,
                         confidence=confidence)


def audit_path(run_path: Path) -> Path:
    return run_path / "report" / "audit.json"
