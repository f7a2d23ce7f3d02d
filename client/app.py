"""The ClientApp: train with DP-SGD, pay into the ledger before replying, reply with DP data only.

What leaves a client by default: the noised update (covered by the ledger), the cumulative
epsilon and the release parameters (public: they describe the mechanism), and an aggregation
weight that is public by declaration (the declared dataset size, which the published sampling
rate ``q = batch / declared`` reveals anyway, or 1 for uniform weights). Losses and accuracies
on private data are sent only when ``private-metrics`` is on, and the run then says its
guarantee excludes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dpfl.client.ledger_store import LedgerConflictError, ledger_path, load_ledger, remember
from dpfl.client.randomness import dp_generators, pick_device
from dpfl.client.training import TrainSettings, train_locally
from dpfl.models import build_model
from dpfl.models.evaluation import evaluate_model
from dpfl.privacy import (
    DpSgdRelease,
    PrivacyPolicy,
    calibrate_noise,
    check_budget,
    epsilon,
    steps_per_round,
    wire,
)

log = logging.getLogger("dpfl.client")


@dataclass(frozen=True)
class ClientSetup:
    """Everything a client needs, resolved from its Context by the composition root."""

    config: Mapping[str, Any]  # validated flat run config
    client_id: str  # stable across node re-registrations
    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


SetupFn = Callable[[Context], ClientSetup]


def train_settings(cfg: Mapping[str, Any], noise_multiplier: float) -> TrainSettings:
    return TrainSettings(
        local_epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]),
        learning_rate=float(cfg["learning-rate"]), momentum=float(cfg["momentum"]),
        optimizer=str(cfg["optimizer"]), dp=bool(cfg["dp"]), noise_multiplier=noise_multiplier,
        max_grad_norm=float(cfg["max-grad-norm"]), grad_sample_mode=str(cfg["grad-sample-mode"]),
    )


def noise_multiplier_for(cfg: Mapping[str, Any], declared: int, delta: float) -> float:
    """sigma for this client: the configured one, or calibrated so that the client ends at
    target-epsilon after the most rounds it may take part in (no amplification from being
    sampled as a client: the server knows who took part)."""
    target = float(cfg["target-epsilon"])
    if target <= 0:
        return float(cfg["noise-multiplier"])
    q, steps = steps_per_round(declared, int(cfg["batch-size"]), int(cfg["local-epochs"]))
    rounds = PrivacyPolicy.from_config(cfg).participation_cap
    return calibrate_noise(target, delta, q, steps, rounds, accountant=str(cfg["accountant"]))


def epsilon_budget(cfg: Mapping[str, Any]) -> float:
    """The per-client budget a release must stay within (0: none). A target epsilon is a budget too."""
    return PrivacyPolicy.from_config(cfg).budget


def _state_dir(cfg: Mapping[str, Any], run_path: str) -> str:
    if cfg["state-dir"]:
        return str(cfg["state-dir"])
    return str(Path(run_path) / "client-state") if run_path else ""


def build_client_app(setup: SetupFn) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        s = setup(context)
        cfg = s.config
        instruction = msg.content["config"]
        server_round = int(instruction[wire.CFG_ROUND])
        delta = float(instruction[wire.CFG_DELTA])
        path = ledger_path(_state_dir(cfg, str(instruction.get(wire.CFG_RUN_PATH, ""))), s.client_id)
        try:
            ledger = load_ledger(context, path)
        except LedgerConflictError as exc:
            return Message(Error(code=wire.LEDGER_CONFLICT, reason=f"{s.client_id}: {exc}"), reply_to=msg)

        declared = int(s.train_y.shape[0])
        accountant = str(cfg["accountant"])
        release = None
        if cfg["dp"]:
            sigma = noise_multiplier_for(cfg, declared, delta)
            q, steps = steps_per_round(declared, int(cfg["batch-size"]), int(cfg["local-epochs"]))
            release = DpSgdRelease(noise_multiplier=sigma, sample_rate=q, steps=steps, round=server_round)
            budget = epsilon_budget(cfg)
            if budget > 0:
                verdict = check_budget(ledger.releases, release, delta, budget, accountant)
                if not verdict.allowed:
                    log.info("%s declines round %d: %s", s.client_id, server_round, verdict.reason)
                    return Message(Error(code=wire.BUDGET_EXHAUSTED, reason=f"{s.client_id}: {verdict.reason}"),
                                   reply_to=msg)
        else:
            sigma = 0.0

        device = pick_device(str(cfg["device"]))
        model = build_model(str(cfg["model"]), s.input_shape, s.num_classes)
        model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
        sampling_gen, noise_gen = dp_generators(
            deterministic=bool(cfg["deterministic-noise"]), seed=int(cfg["seed"]),
            partition_id=s.partition_id, server_round=server_round, device=device)
        outcome = train_locally(model, s.train_x, s.train_y, train_settings(cfg, sigma),
                                sampling_generator=sampling_gen, noise_generator=noise_gen, device=device)

        eps = 0.0
        if release is not None:
            # Pay before the update leaves: durable on disk first, then mirrored in context.state.
            eps = epsilon([*ledger.releases, release], delta, accountant)
            ledger.append(release, delta=delta, accountant=accountant, epsilon=eps, client=s.client_id)
            remember(context, ledger)

        metrics: dict[str, float | int] = {
            "num-examples": declared if cfg["aggregation-weights"] == "declared" else 1,
            "epsilon": eps,
            "noise-multiplier": sigma,
            "sample-rate": outcome.sample_rate,
            "steps": outcome.steps,
            "partition-id": s.partition_id,
        }
        if cfg["private-metrics"]:
            metrics["train-loss"] = outcome.mean_loss
            metrics["train-examples-seen"] = outcome.examples_seen
        release_info = ConfigRecord({"client-id": s.client_id, "mechanism": "dp-sgd" if cfg["dp"] else "none"})
        model.to("cpu")
        content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.METRICS: MetricRecord(metrics),
                              wire.RELEASE: release_info})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Client-side evaluation on the local validation split: computed on private data, NOT DP."""
        s = setup(context)
        model = build_model(str(s.config["model"]), s.input_shape, s.num_classes)
        model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
        loss, acc = evaluate_model(model, s.val_x, s.val_y, device=pick_device(str(s.config["device"])))
        metrics = MetricRecord({"num-examples": max(int(s.val_y.shape[0]), 1), "val-loss": loss,
                                "val-accuracy": acc})
        return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app
