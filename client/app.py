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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dpfl.client.ledger_store import LedgerConflictError, ledger_path, load_ledger, remember
from dpfl.client.randomness import dp_generators, pick_device
from dpfl.client.settings import ClientSettings
from dpfl.client.training import train_locally
from dpfl.models import build_model
from dpfl.models.evaluation import evaluate_model
from dpfl.privacy import DpSgdRelease, calibrate_noise, check_budget, epsilon, steps_per_round, wire

log = logging.getLogger("dpfl.client")


@dataclass(frozen=True)
class ClientSetup:
    """Everything a client needs, resolved from its Context by the composition root."""

    settings: ClientSettings
    client_id: str  # stable across node re-registrations
    partition_id: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


SetupFn = Callable[[Context], ClientSetup]


def noise_multiplier_for(settings: ClientSettings, declared: int, delta: float) -> float:
    """sigma for this client: the configured one, or calibrated so that the client ends at
    target-epsilon after the most rounds it may take part in (no amplification from being
    sampled as a client: the server knows who took part)."""
    policy = settings.policy
    if policy.target_epsilon <= 0:
        return settings.noise_multiplier
    q, steps = steps_per_round(declared, settings.batch_size, settings.local_epochs)
    return calibrate_noise(policy.target_epsilon, delta, q, steps, policy.participation_cap,
                           accountant=policy.accountant)


def _state_dir(settings: ClientSettings, run_path: str) -> str:
    if settings.state_dir:
        return settings.state_dir
    return str(Path(run_path) / "client-state") if run_path else ""


def build_client_app(setup: SetupFn) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        s = setup(context)
        cfg = s.settings
        policy = cfg.policy
        instruction = wire.read_train_instruction(msg.content[wire.CONFIG])
        server_round, delta = instruction.server_round, instruction.delta
        path = ledger_path(_state_dir(cfg, instruction.run_path), s.client_id)
        try:
            ledger = load_ledger(context, path)
        except LedgerConflictError as exc:
            return Message(Error(code=wire.LEDGER_CONFLICT, reason=f"{s.client_id}: {exc}"), reply_to=msg)

        declared = int(s.train_y.shape[0])
        release = None
        if policy.dp:
            sigma = noise_multiplier_for(cfg, declared, delta)
            q, steps = steps_per_round(declared, cfg.batch_size, cfg.local_epochs)
            release = DpSgdRelease(noise_multiplier=sigma, sample_rate=q, steps=steps, round=server_round)
            if policy.budget > 0:
                verdict = check_budget(ledger.releases, release, delta, policy.budget, policy.accountant)
                if not verdict.allowed:
                    log.info("%s declines round %d: %s", s.client_id, server_round, verdict.reason)
                    return Message(Error(code=wire.BUDGET_EXHAUSTED, reason=f"{s.client_id}: {verdict.reason}"),
                                   reply_to=msg)
        else:
            sigma = 0.0

        device = pick_device(cfg.device)
        model = build_model(cfg.model, s.input_shape, s.num_classes)
        model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
        sampling_gen, noise_gen = dp_generators(
            deterministic=policy.deterministic_noise, seed=cfg.seed,
            partition_id=s.partition_id, server_round=server_round, device=device)
        outcome = train_locally(model, s.train_x, s.train_y, cfg.train_settings(sigma),
                                sampling_generator=sampling_gen, noise_generator=noise_gen, device=device)

        eps = 0.0
        if release is not None:
            # Pay before the update leaves: durable on disk first, then mirrored in context.state.
            eps = epsilon([*ledger.releases, release], delta, policy.accountant)
            ledger.append(release, delta=delta, accountant=policy.accountant, epsilon=eps, client=s.client_id)
            remember(context, ledger)

        release_metrics, release_info = wire.release_to_wire(s.client_id, release)
        metrics: dict[str, float | int] = {
            wire.NUM_EXAMPLES: declared if cfg.aggregation_weights == "declared" else 1,
            wire.EPSILON: eps,
            wire.SAMPLE_RATE: outcome.sample_rate,
            wire.STEPS: outcome.steps,
            **release_metrics,
            wire.PARTITION_ID: s.partition_id,
        }
        if policy.private_metrics:
            metrics["train-loss"] = outcome.mean_loss
            metrics["train-examples-seen"] = outcome.examples_seen
        model.to("cpu")
        content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.METRICS: MetricRecord(metrics),
                              wire.RELEASE: ConfigRecord(release_info)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Client-side evaluation on the local validation split: computed on private data, NOT DP."""
        s = setup(context)
        model = build_model(s.settings.model, s.input_shape, s.num_classes)
        model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
        loss, acc = evaluate_model(model, s.val_x, s.val_y, device=pick_device(s.settings.device))
        metrics = MetricRecord({wire.NUM_EXAMPLES: max(int(s.val_y.shape[0]), 1), "val-loss": loss,
                                "val-accuracy": acc})
        return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app
