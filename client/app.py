"""The ClientApp: agree its terms, train with DP-SGD, pay into the ledger before replying, reply with DP data only.

Before its first round the server asks each client for its terms (a Flower query): the client computes its
own sigma, checks the proposal against its owner's privacy policy (client.terms) and answers with the
release one round makes and how many rounds it will take part in, or declines. Every train instruction is
checked again. What leaves a client by default: the noised update (covered by the ledger), the release
parameters (public: they describe the mechanism), and the aggregation weight, the public declared record
count N (or 1 for uniform weights). Losses and accuracies on private data are sent only when
``private-metrics`` is on and the owner's policy allows it, and the run then says its guarantee excludes them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dpfl.client.canaries import DiracCanaries
from dpfl.client.ledger_store import LedgerConflictError, ledger_path, load_ledger, remember
from dpfl.client.randomness import dp_generators, pick_device
from dpfl.client.resend import StoredUpdate, load_update, model_digest, store_update, update_path
from dpfl.client.settings import ClientSettings
from dpfl.client.terms import (
    Declined,
    budget_verdict,
    max_rounds,
    plan_round,
    prior_epsilon,
    prior_runs,
)
from dpfl.client.training import train_locally
from dpfl.client.user_clip import clip_update
from dpfl.models import build_model
from dpfl.models.evaluation import evaluate_model
from dpfl.models.regularisation import add_dropout
from dpfl.privacy import Ledger, epsilon, wire
from dpfl.privacy.owner_policy import OwnerPolicy
from dpfl.privacy.policy import NOT_PRIVATE_STAMP

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
    declared_records: int  # the public N: sampling rate, steps and FedAvg weight come from it
    owner_policy: OwnerPolicy | None = None  # the data owner's own limits, from the node's own config
    canaries: DiracCanaries | None = None  # a privacy audit's gradient canaries included here (client/canaries.py)


SetupFn = Callable[[Context], ClientSetup]


def _ledger_file(s: ClientSetup, run_path: str) -> Path | None:
    """The owner's ledger of these records (across runs) under a policy; else this run's state directory."""
    if s.owner_policy is not None:
        return s.owner_policy.ledger_path()
    state_dir = s.settings.state_dir or (str(Path(run_path) / "client-state") if run_path else "")
    return ledger_path(state_dir, s.client_id)


def _open_ledger(s: ClientSetup, context: Context, run_path: str) -> Ledger:
    try:
        return load_ledger(context, _ledger_file(s, run_path))
    except LedgerConflictError as exc:
        raise Declined(wire.LEDGER_CONFLICT, f"{s.client_id}: {exc}") from None


def _entry_fields(s: ClientSetup, run_path: str) -> dict[str, object]:
    """What every ledger line of this client says besides the release: who, which run, which relation."""
    fields: dict[str, object] = {"client": s.client_id, "run": run_path, "neighbouring": s.settings.neighbouring,
                                 "declared_records": s.declared_records}
    if s.owner_policy is not None:
        fields["data_source"] = s.owner_policy.data_source
    # which generator drew this release's noise and batches (docs/noise.md): the guarantee assumes neither
    # can be predicted, so the owner's ledger says which it was
    fields["randomness"] = "torch-mt19937-seeded" if s.settings.policy.deterministic_noise else "aes-256-ctr"
    if s.settings.policy.not_private:
        fields["privacy"] = NOT_PRIVATE_STAMP
    return fields


def _declined(exc: Declined, msg: Message) -> Message:
    log.info("%s", exc.reason)
    return Message(Error(code=exc.code, reason=exc.reason), reply_to=msg)


def _set_up(setup: SetupFn, context: Context) -> ClientSetup:
    """The client's setup, or a ``Declined`` (CLIENT_FAILED) whose one line says why this node cannot take
    part (its data or config is unusable): the server logs it instead of a traceback from the worker."""
    try:
        return setup(context)
    except Exception as exc:  # noqa: BLE001 - the composition root raises config and data errors of any kind
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise Declined(wire.CLIENT_FAILED, f"node {context.node_id} cannot take part: {reason}") from None


def paid_for(ledger: Ledger, run: str, server_round: int) -> bool:
    """Whether this client's ledger already holds its release for round ``server_round`` of ``run``."""
    return any(e.get("run", run) == run and e.get("round") == server_round for e in ledger.entries)


def _resend(s: ClientSetup, msg: Message, ledger_file: Path | None, run: str, server_round: int,
            incoming: dict[str, torch.Tensor]) -> Message:
    """The update this client already paid for in round ``server_round`` (a resumed server asks again), or a
    refusal of that round: it never trains, and pays, for one round twice."""
    stored = load_update(update_path(ledger_file), run, server_round, model_digest(incoming)) if ledger_file else None
    if stored is None:
        raise Declined(wire.CLIENT_FAILED, f"{s.client_id}: already paid for round {server_round} of this run, and "
                       "the update it paid for is not stored for this model; it will not train that round twice "
                       "(the charge stands)")
    log.info("%s: round %d was paid for before the server was interrupted; re-sending that update", s.client_id,
             server_round)
    content = RecordDict({wire.ARRAYS: ArrayRecord(OrderedDict(stored.arrays)),
                          wire.METRICS: MetricRecord(stored.metrics), wire.RELEASE: ConfigRecord(stored.release)})
    return Message(content=content, reply_to=msg)


def build_client_app(setup: SetupFn) -> ClientApp:
    app = ClientApp()

    @app.query()
    def terms(msg: Message, context: Context) -> Message:
        """Before its first round: what this client will release in this run, or a policy decline."""
        try:
            s = _set_up(setup, context)
        except Declined as exc:
            return _declined(exc, msg)
        request = wire.read_terms_request(msg.content[wire.CONFIG])
        run_path, delta = request.run_path, request.delta
        try:
            ledger = _open_ledger(s, context, run_path)
            per_round = plan_round(s.settings, s.owner_policy, s.declared_records, delta, s.client_id)
            accountant, relation = s.settings.policy.accountant, s.settings.neighbouring
            terms = wire.ClientTerms(
                client_id=s.client_id, release=per_round, neighbouring=relation,
                declared_records=s.declared_records,
                max_rounds=max_rounds(s.settings, s.owner_policy, ledger, run_path, per_round, delta,
                                      request.server_round),
                prior_epsilon=prior_epsilon(ledger, run_path, delta, accountant, relation),
                prior_runs=prior_runs(ledger, run_path))
        except Declined as exc:
            return _declined(exc, msg)
        return Message(RecordDict({wire.TERMS: ConfigRecord(wire.terms_to_wire(terms))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            s = _set_up(setup, context)
        except Declined as exc:
            return _declined(exc, msg)
        cfg = s.settings
        instruction = wire.read_train_instruction(msg.content[wire.CONFIG])
        server_round, delta, run_path = instruction.server_round, instruction.delta, instruction.run_path
        user_level = cfg.privacy_unit == "client"
        if user_level != (instruction.user_clip_norm is not None):  # never send an unclipped update by mistake
            return _declined(Declined(wire.CLIENT_FAILED, f"{s.client_id}: the run config says privacy-unit = "
                                      f"{cfg.privacy_unit} but the train instruction "
                                      f"{'has no' if user_level else 'has a'} user-level clip norm"), msg)
        incoming = msg.content[wire.ARRAYS].to_torch_state_dict()
        ledger_file = _ledger_file(s, run_path)
        try:
            ledger = _open_ledger(s, context, run_path)
            if paid_for(ledger, run_path, server_round):
                return _resend(s, msg, ledger_file, run_path, server_round, incoming)
            per_round = plan_round(cfg, s.owner_policy, s.declared_records, delta, s.client_id)
            release = None if per_round is None else replace(per_round, round=server_round)
            if release is not None:
                budget_verdict(cfg, s.owner_policy, ledger, run_path, release, delta, s.client_id)
        except Declined as exc:
            return _declined(exc, msg)

        device = pick_device(cfg.device)
        model = build_model(cfg.model, s.input_shape, s.num_classes, fix=cfg.fix_model)
        add_dropout(model, cfg.dropout)  # training only; the weights and eval mode are unchanged
        model.load_state_dict(incoming)
        sampling_gen, noise_gen = dp_generators(
            deterministic=cfg.policy.deterministic_noise, seed=cfg.seed,
            partition_id=s.partition_id, server_round=server_round, device=device)
        sigma = release.noise_multiplier if release is not None else 0.0
        outcome = train_locally(model, s.train_x, s.train_y, cfg.train_settings(sigma),
                                declared_records=s.declared_records, sampling_generator=sampling_gen,
                                noise_generator=noise_gen, device=device, canaries=s.canaries)

        eps = 0.0
        if release is not None:  # the ledger may hold earlier runs on these records: epsilon composes over all
            eps = epsilon([*ledger.releases, release], delta, cfg.policy.accountant, neighbouring=cfg.neighbouring)
        release_metrics, release_info = wire.release_to_wire(s.client_id, release)
        metrics: dict[str, float | int] = {
            wire.NUM_EXAMPLES: s.declared_records if cfg.aggregation_weights == "declared" else 1,
            wire.EPSILON: eps,
            wire.SAMPLE_RATE: outcome.sample_rate,
            wire.STEPS: outcome.steps,
            **release_metrics,
            wire.PARTITION_ID: s.partition_id,
        }
        if cfg.policy.private_metrics:
            metrics[wire.TRAIN_LOSS] = outcome.mean_loss
            metrics[wire.TRAIN_EXAMPLES_SEEN] = outcome.examples_seen
        model.to("cpu")
        update = model.state_dict()
        if instruction.user_clip_norm is not None:  # user-level DP: the whole update is clipped here, on the client
            update, within = clip_update(incoming, update, instruction.user_clip_norm)
            metrics[wire.WITHIN_CLIP] = 1 if within else 0
        if release is not None:
            # Kept first (it has not left yet), then paid: durable on disk, then mirrored in context.state; only
            # then does the update leave. A resumed server asking for this round again gets this very update.
            if ledger_file is not None:
                store_update(update_path(ledger_file), StoredUpdate(run_path, server_round, model_digest(incoming),
                                                                    dict(update), metrics, release_info))
            ledger.append(release, delta=delta, accountant=cfg.policy.accountant, epsilon=eps,
                          **_entry_fields(s, run_path))
            remember(context, ledger)
        content = RecordDict({wire.ARRAYS: ArrayRecord(update), wire.METRICS: MetricRecord(metrics),
                              wire.RELEASE: ConfigRecord(release_info)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Client-side evaluation on the local validation split: computed on private data, NOT DP."""
        try:
            s = _set_up(setup, context)
        except Declined as exc:
            return _declined(exc, msg)
        if s.owner_policy is not None and not s.owner_policy.allow_private_metrics:
            return _declined(Declined(wire.POLICY_DECLINED, f"{s.client_id}: declined by its privacy policy: "
                                      "client-side evaluation sends metrics of private data and "
                                      f"{s.owner_policy.source} has allow-private-metrics = false"), msg)
        model = build_model(s.settings.model, s.input_shape, s.num_classes,
                            fix=s.settings.fix_model)
        model.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict())
        loss, acc = evaluate_model(model, s.val_x, s.val_y, device=pick_device(s.settings.device))
        metrics = MetricRecord({wire.NUM_EXAMPLES: max(int(s.val_y.shape[0]), 1), "val-loss": loss,
                                "val-accuracy": acc})
        return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app
