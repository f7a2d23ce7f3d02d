"""The ServerApp: DP-aware FedAvg with server-side evaluation and the run directory."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from dpfl.models import build_model
from dpfl.models.evaluation import evaluate_model
from dpfl.privacy import PolicyError
from dpfl.privacy.policy import NOT_PRIVATE_STAMP
from dpfl.privacy.rundata import CONFIG_FILE, RUN_DIRECTORY_KEYS, SERVER_LEDGER, SUMMARY_FILE, read_config
from dpfl.server.audit_observer import ReleaseObserver
from dpfl.server.averaging import ParameterEma, PostProcessing, ServerOptimizer
from dpfl.server.canary_clients import CanaryClients
from dpfl.server.early_stopping import EarlyStopping, validation_split
from dpfl.server.environment import describe_environment
from dpfl.server.federation import Evaluator, FederationResult, LogReporter, Reporter, run_federation
from dpfl.server.inputs import describe_inputs
from dpfl.server.reply_checks import UpdateBound
from dpfl.server.resume import ResumeError, check_same_run, resume
from dpfl.server.roster import Roster
from dpfl.server.rundir import RunDirectory
from dpfl.server.settings import ServerSettings
from dpfl.server.strategy import DpFedAvg
from dpfl.server.user_level import (
    UserLevelError,
    UserLevelMechanism,
    UserLevelSettings,
    noise_source,
    user_level_settings,
)

log = logging.getLogger("dpfl.server")

class ServerConfigError(ValueError):
    """The server cannot start with this configuration; the message says what to set."""


@dataclass
class ServerSetup:
    settings: ServerSettings
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    run_path: Path
    declared_total: int | None = None  # sum of clients' declared records, when known up front
    reporter: Reporter = field(default_factory=LogReporter)
    on_finish: Callable[[FederationResult, RunDirectory, float], None] | None = None
    observer: ReleaseObserver | None = None  # a privacy audit's white-box view (server/audit_observer.py)
    canary_clients: CanaryClients | None = None  # a user-level audit's crafted clients (server/canary_clients.py)


AUDIT_OBSERVATIONS = "audit/observations.npz"


def _evaluator(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluator:
    """(loss, accuracy) of a global model on the server's records ``x``, ``y``."""

    def evaluate(arrays: ArrayRecord) -> tuple[float, float]:
        model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate_model(model, x, y)

    return evaluate


def serve(grid: Grid, s: ServerSetup) -> FederationResult:
    settings = s.settings
    t_start = time.perf_counter()
    policy = settings.policy
    try:
        delta = policy.delta(s.declared_total)
    except PolicyError as exc:
        raise ServerConfigError(str(exc)) from exc
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, s.input_shape, s.num_classes, fix=settings.fix_model)
    user_settings = None
    if policy.user_level:
        try:
            user_settings = user_level_settings(settings.run_config)
        except UserLevelError as exc:
            raise ServerConfigError(str(exc)) from None
    rundir = RunDirectory(s.run_path).create()
    resuming = bool(settings.run_config.get("resume"))
    if resuming and s.observer is not None:
        raise ServerConfigError("an audit run cannot be resumed (its observations are not checkpointed): run "
                                "`dpfl audit` again under a new --run-name")
    if resuming:  # config.json stays the interrupted run's own: the resumed run must be the same run
        stored = read_config(rundir.path)
        if stored is None:
            raise ServerConfigError(f"cannot resume: {rundir.path} holds no config.json; it is not a dpfl run")
        try:
            check_same_run({k: v for k, v in stored.items() if k not in RUN_DIRECTORY_KEYS}, settings.run_config)
        except ResumeError as exc:
            raise ServerConfigError(str(exc)) from None
    else:
        rundir.write_json(CONFIG_FILE, {
            **settings.run_config, "resolved": {"delta": delta, "max-participations": policy.participation_cap,
                                                **_user_level_resolved(user_settings)},
            "privacy-statement": policy.statement(),
            "environment": describe_environment(settings.run_config.get("device", "auto")),
            "inputs": describe_inputs(settings.run_config, model)})
    roster = Roster(ledger_dir=rundir.ledgers, delta=delta, accountant=policy.accountant,
                    max_participations=policy.participation_cap, budget=policy.budget,
                    neighbouring=settings.neighbouring, run=str(rundir.path),
                    entry_fields={"privacy": NOT_PRIVATE_STAMP} if policy.not_private else {})
    user_level = None if user_settings is None else UserLevelMechanism(
        user_settings, rundir.ledgers / f"{SERVER_LEDGER}.jsonl", run=str(rundir.path),
        entry_fields={"privacy": NOT_PRIVATE_STAMP} if policy.not_private else {},
        rng=noise_source(policy.deterministic_noise, settings.seed))
    strategy = DpFedAvg(roster=roster, num_clients=settings.num_clients, fraction_train=settings.fraction_train,
                        min_train_clients=settings.min_train_clients, fraction_evaluate=settings.fraction_evaluate,
                        post_processing=PostProcessing(
                            steps=[ServerOptimizer(settings.server_learning_rate, settings.server_momentum)],
                            ema=ParameterEma(settings.ema_decay)),
                        seed=settings.seed, aggregation_weights=settings.aggregation_weights,
                        update_bound=UpdateBound.from_run_config(settings.run_config), user_level=user_level,
                        observer=s.observer, canary_clients=s.canary_clients)
    eval_model = build_model(settings.model, s.input_shape, s.num_classes, fix=settings.fix_model)
    test_x, test_y, stopper, validate = s.test_x, s.test_y, None, None
    if settings.early_stopping_patience > 0:  # a fixed validation split of the server's own records
        val_idx, test_idx = validation_split(int(s.test_y.shape[0]), settings.server_validation_fraction)
        if val_idx.numel() == 0 or test_idx.numel() == 0:
            raise ServerConfigError(f"early stopping needs server-held records for validation and for the test: the "
                                    f"server holds {int(s.test_y.shape[0])}; give it a test set (test-data-path)")
        test_x, test_y = s.test_x[test_idx], s.test_y[test_idx]
        stopper = EarlyStopping(settings.early_stopping_patience, rundir.path)
        validate = _evaluator(eval_model, s.test_x[val_idx], s.test_y[val_idx])
    evaluate = _evaluator(eval_model, test_x, test_y)

    for line in policy.statement():
        log.info(line)
    log.info("delta = %.3g for every client; accountant %s; neighbouring relation %s", delta, policy.accountant,
             settings.neighbouring)
    if user_settings is not None:
        log.info("user-level DP: noise multiplier %.4g, clip norm %.4g%s, q = %.4g (expected cohort %g of %d), "
                 "user-level delta %.3g", user_settings.noise_multiplier, user_settings.clip_norm,
                 " (adaptive)" if user_settings.adaptive else "", user_settings.sample_rate,
                 user_settings.expected_cohort, user_settings.population, user_settings.delta)
    initial, start_round = ArrayRecord(model.state_dict()), 1
    if resuming:
        try:
            resumed = resume(rundir, roster, strategy, strategy.post_processing)
        except ResumeError as exc:
            raise ServerConfigError(str(exc)) from None
        start_round, initial = resumed.start_round, resumed.arrays or initial
    result = run_federation(grid=grid, settings=settings, strategy=strategy, roster=roster, evaluate=evaluate,
                            rundir=rundir, initial_arrays=initial, delta=delta, reporter=s.reporter,
                            start_round=start_round, early_stopping=stopper, validate=validate)
    rundir.save_model(result.arrays.to_torch_state_dict())
    if s.observer is not None:
        s.observer.write(rundir.path / AUDIT_OBSERVATIONS)
    wall = time.perf_counter() - t_start
    rundir.write_json(SUMMARY_FILE, {
        "rounds_completed": result.rounds_completed, "num_server_rounds": settings.num_rounds,
        "stop_reason": result.stop_reason, "final_accuracy": result.final_accuracy,
        "final_loss": result.final_loss, "epsilon_max": result.epsilon_max, "delta": delta,
        "accountant": policy.accountant, "neighbouring": settings.neighbouring,
        "epsilon_per_client": result.epsilons,
        "clients": _published_clients(roster, user_level is not None), "wall_seconds": wall,
        "not_private": policy.not_private,
        **({"privacy": NOT_PRIVATE_STAMP} if policy.not_private else {}),
        "privacy_statement": policy.statement(),
        "privacy_unit": policy.privacy_unit,
        **({} if stopper is None else {"early_stopping": {
            "patience": stopper.patience, "best_round": stopper.best_round,
            "best_validation_accuracy": stopper.best_accuracy if stopper.best_round else None,
            "validation_records": int(s.test_y.shape[0]) - int(test_y.shape[0]),
            "test_records": int(test_y.shape[0])}}),
        **({} if user_level is None else {
            "user_epsilon": user_level.epsilon, "user_delta": user_settings.delta if user_settings else None,
            "user_accountant": user_level.accountant, "user_neighbouring": user_level.neighbouring,
            "client_sampling": user_level.settings.sampling,
            "expected_cohort": user_level.settings.expected_cohort,
            "user_noise_multiplier": user_level.settings.noise_multiplier, "final_clip_norm": user_level.clip_norm}),
    })
    if result.stop_reason:
        log.warning("run stopped early after round %d: %s", result.rounds_completed, result.stop_reason)
    if s.on_finish is not None:
        s.on_finish(result, rundir, wall)
    return result


def _published_clients(roster: Roster, user_level: bool) -> dict:
    """summary.json's clients: under user-level DP without the per-round events (a drop names a cohort member)."""
    clients = roster.state()["clients"]
    if user_level:
        for state in clients.values():
            state["events"] = [e for e in state["events"] if int(e.get("round", 0)) <= 0]  # before round 1 only
    return clients


def _user_level_resolved(settings: UserLevelSettings | None) -> dict[str, float]:
    """What config.json's ``resolved`` records of the user-level mechanism (the calibrated noise multiplier)."""
    if settings is None:
        return {}
    return {"user-noise-multiplier": settings.noise_multiplier, "user-delta": settings.delta,
            "update-noise-multiplier": settings.update_noise_multiplier, "expected-cohort": settings.expected_cohort,
            "clipped-count-stddev": settings.count_stddev}


def build_server_app(setup: Callable[[Context], ServerSetup]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        root = logging.getLogger("dpfl")
        if not root.handlers:  # under `flwr run` / a SuperLink nobody configured us: log rounds to stdout
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(asctime)s dpfl %(message)s", "%H:%M:%S"))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            root.propagate = False
        serve(grid, setup(context))

    return app
