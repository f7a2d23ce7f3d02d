"""``dpfl audit``: a federation with canaries, the same mechanism and ledgers as any run, then its audit.

The run is an ordinary ``dpfl simulate`` run (its ledgers are charged, its report written) whose clients also
hold the canaries their coins included (simulations/audit/plan.py). Afterwards the canaries are scored
(score.py), the one-run lower bound is computed at the run's delta and written to ``report/audit.json``, and the
report is written again with its audit section. ``runs > 1`` repeats the audit with fresh coins and adds the
many-run bounds on the pooled scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpfl.client.dp_modes import choose_mode
from dpfl.models import build_model
from dpfl.privacy import wire
from dpfl.privacy.audit.many_runs import many_run_bounds
from dpfl.privacy.rundata import load_run, read_summary
from dpfl.simulations import apps
from dpfl.simulations.audit.plan import AUDIT_DIR, AuditPlan, gradient_canaries, input_canaries, write_plan
from dpfl.simulations.audit.score import (
    AuditScoreError,
    audit_path,
    audit_record,
    gradient_scores,
    input_scores,
    one_run,
    user_level_scores,
)
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.data.clients import load_test_set
from dpfl.simulations.engines.simulate import check_run_directory, preflight, simulate
from dpfl.simulations.model_card import load_model

MIN_CANARIES = 100


@dataclass(frozen=True)
class AuditOutcome:
    run_path: Path
    record: dict[str, Any]


def check_audit(cfg: RunConfig, kind: str, canaries: int, confidence: float, runs: int) -> None:
    """Everything an audit needs, before anything trains; ConfigError names what to change."""
    if canaries < MIN_CANARIES:
        raise ConfigError(f"--canaries {canaries}: an audit needs at least {MIN_CANARIES} canaries (1000 or more for a "
                          "useful bound)")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence {confidence}: expected a number in [0.5, 1), e.g. 0.95")
    if runs < 1:
        raise ConfigError(f"--runs {runs}: expected an integer >= 1")
    if cfg["resume"]:
        raise ConfigError("an audit run cannot be resumed: start a new one")
    if cfg["deterministic-noise"]:
        raise ConfigError("--deterministic-noise: an audit must see the real noise; drop it")
    if cfg["privacy-unit"] == "client":
        if kind != "gradient":
            raise ConfigError("a user-level audit's canaries are crafted clients: use --canary-kind gradient")
        if cfg["client-sampling"] != "poisson" or cfg["adaptive-clipping"]:
            raise ConfigError("the user-level audit checks Poisson cohorts with a fixed clip norm: run it with "
                              "--client-sampling poisson --adaptive-clipping false")
        return
    if not cfg["dp"]:
        raise ConfigError("dpfl audit checks record-level DP-SGD (or, with --privacy-unit client, user-level DP): "
                          "run it with --dp true")
    if cfg["neighbouring"] != "add-remove":
        raise ConfigError("a canary is in or out of the data, so the audit checks the add-remove guarantee: run it "
                          "with --neighbouring add-remove")
    if kind == "gradient":
        if cfg["augmentations"] > 1:
            raise ConfigError("gradient canaries join book-keeping's clipped sum, but --augmentations > 1 trains "
                              "with Opacus' hooks: audit with --augmentations 1 or --canary-kind input")
        mode = cfg["grad-sample-mode"] if cfg["grad-sample-mode"] != "auto" else choose_mode(_model(cfg)).mode
        if mode != "bk":
            raise ConfigError(f"gradient canaries are added to the clipped sum of book-keeping clipping, but this "
                              f"model trains in grad-sample-mode {mode!r}: use --canary-kind input, or a model bk "
                              "supports")


def _model(cfg: RunConfig) -> torch.nn.Module:
    """A fresh copy of the run's model, for its layers and parameter names (never trained here)."""
    _, _, shape, classes = load_test_set(cfg.as_dict())
    return build_model(cfg["model"], shape, classes, fix=cfg["fix-model"])


def _trainable(cfg: RunConfig) -> list[tuple[str, int]]:
    return [(name, p.numel()) for name, p in _model(cfg).named_parameters() if p.requires_grad]


def plan_canaries(cfg: RunConfig, path: Path, kind: str, m: int) -> AuditPlan:
    owners = [apps.default_client_id(p) for p in range(cfg["num-clients"])]
    if cfg["privacy-unit"] == "client":  # crafted clients, simulated at the server (server/canary_clients.py)
        owners = [wire.RESERVED_CLIENT_ID]
    if kind == "gradient":
        chosen = gradient_canaries(owners, m, _trainable(cfg))
    else:
        _, test_y, _, classes = load_test_set(cfg.as_dict())
        chosen = input_canaries(owners, m, int(test_y.shape[0]), classes, test_y.numpy())
    return write_plan(path / AUDIT_DIR, kind, chosen)


def score_run(path: Path, plan: AuditPlan, *, confidence: float, guesses: int, command: str) -> dict[str, Any]:
    """Score, bound, write report/audit.json and the report with its audit section."""
    run = load_run(path)
    summary = read_summary(path) or {}
    user_level = run.config.get("privacy-unit") == "client"
    claimed, delta = ((summary.get("user_epsilon"), summary.get("user_delta")) if user_level
                      else (summary.get("epsilon_max"), summary.get("delta")))
    if not isinstance(claimed, int | float) or not isinstance(delta, int | float):
        raise AuditScoreError(f"{path}: summary.json has no epsilon and delta; the run did not finish")
    if user_level:
        scores = user_level_scores(run, plan)
    elif plan.kind == "gradient":
        scores = gradient_scores(run, plan)
    else:
        model, _ = load_model(path)
        test_x, _, _, _ = load_test_set(run.config)
        scores = input_scores(run, plan, test_x, model)
    result = one_run(scores, plan, delta=float(delta), confidence=confidence, requested=guesses)
    accountant = (run.user_ledger.entries[-1].get("accountant") if user_level and run.user_ledger
                  and run.user_ledger.entries else summary.get("accountant", run.config.get("accountant")))
    record = audit_record(plan, scores, result, claimed_epsilon=float(claimed), accountant=str(accountant),
                          command=command, privacy_unit="client" if user_level else "record")
    write_audit(path, record)
    return record


def write_audit(path: Path, record: dict[str, Any]) -> None:
    from dpfl.privacy.report import write_report  # matplotlib: only at the end

    out = audit_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False), encoding="utf-8")
    tmp.replace(out)
    write_report(path)


def run_audits(cfg: RunConfig, *, kind: str, canaries: int, confidence: float, guesses: int, runs: int,
               command: str, reporter: Any = None,
               on_run: Callable[[int, Path], None] | None = None) -> list[AuditOutcome]:
    """``runs`` audited federations (run names <name>, or <name>-run-01 ... when runs > 1), each with fresh coins."""
    check_audit(cfg, kind, canaries, confidence, runs)
    sigmas = preflight(cfg)
    base = apps.default_run_path(cfg)
    paths = [base] if runs == 1 else [base.with_name(f"{base.name}-run-{k + 1:02d}") for k in range(runs)]
    for path in paths:
        check_run_directory(path, False)
    outcomes: list[AuditOutcome] = []
    for k, path in enumerate(paths):
        if on_run is not None:
            on_run(k, path)
        plan = plan_canaries(cfg, path, kind, canaries)
        run_cfg = cfg.replace(**{"audit-plan": str(path / AUDIT_DIR), "run-name": path.name, "seed": cfg["seed"] + k})
        torch.manual_seed(run_cfg["seed"])
        simulate(run_cfg, reporter=reporter, run_path=path, checked=sigmas)
        outcomes.append(AuditOutcome(path, score_run(path, plan, confidence=confidence, guesses=guesses,
                                                     command=command)))
    if runs > 1:
        pooled_in = np.concatenate([o.record["scores_included"] for o in outcomes])
        pooled_out = np.concatenate([o.record["scores_excluded"] for o in outcomes])
        bounds = many_run_bounds(pooled_in, pooled_out, runs=runs, delta=outcomes[0].record["one_run"]["delta"],
                                 confidence=confidence).as_dict()
        bounds["run_directories"] = [o.run_path.name for o in outcomes]
        bounds["one_run_bounds"] = [o.record["one_run"]["epsilon_lower_bound"] for o in outcomes]
        for o in outcomes:
            o.record["many_runs"] = {k: (None if isinstance(v, float) and math.isinf(v) else v)
                                     for k, v in bounds.items()}
            write_audit(o.run_path, o.record)
    return outcomes
