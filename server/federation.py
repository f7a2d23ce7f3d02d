"""The round loop: ask new clients their terms, sample, charge, train, aggregate, evaluate, write, repeat.

Our own loop rather than ``FedAvg.start`` because a DP run must be able to stop early and cleanly
(budgets exhausted, too few clients left), checkpoint every round, and resume.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from dpfl.privacy import wire
from dpfl.privacy.policy import NOT_PRIVATE_STAMP
from dpfl.server.early_stopping import EarlyStopping
from dpfl.server.resume import checkpoint_state
from dpfl.server.roster import REFUSALS, Roster
from dpfl.server.rundir import RunDirectory
from dpfl.server.settings import ServerSettings
from dpfl.server.strategy import DpFedAvg, source_node
from dpfl.server.terms import ask_terms

log = logging.getLogger("dpfl.server")

Evaluator = Callable[[ArrayRecord], tuple[float, float]]  # arrays -> (loss, accuracy)


class Reporter(Protocol):
    def start(self, total_rounds: int) -> None: ...
    def round(self, row: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


class LogReporter:
    """One readable line per round through logging (used under `flwr run` and SuperLink)."""

    def start(self, total_rounds: int) -> None:
        self.total = total_rounds

    def round(self, row: Mapping[str, Any]) -> None:
        log.info(format_round_line(row, self.total))

    def stop(self) -> None:
        return None


def format_round_line(row: Mapping[str, Any], total: int) -> str:
    """One readable line per round; a run without a DP guarantee says so first (``"privacy": "NOT PRIVATE"``)."""
    eps = row.get("epsilon_max")
    eps_text = "ε max n/a (no DP)" if eps is None else f"ε max {eps:.3f}"
    extra = ""
    if row.get("events"):
        extra = " | " + "; ".join(f"{e.get('client')} {e.get('event')}" for e in row["events"])
    loss = row.get("loss")
    stamp = f"{NOT_PRIVATE_STAMP} | " if row.get("privacy") == NOT_PRIVATE_STAMP else ""
    who = f"{row['participants']} clients"
    if row.get("user_epsilon") is not None:  # user-level DP: the cohort is not published, its expectation is
        who = f"user-level ε {row['user_epsilon']:.3f} | expected cohort {row['expected_cohort']:g}"
        eps_text = "" if eps is None else f"{eps_text} (record-level) | "
    else:
        eps_text += " | "
    return (f"{stamp}round {row['round']:>3}/{total} | accuracy {row['accuracy']:.4f} | "
            f"loss {float('nan') if loss is None else loss:.4f} | "
            f"{eps_text}{who} | {row['seconds']:.1f} s{extra}")


@dataclass
class FederationResult:
    rounds_completed: int
    stop_reason: str
    final_accuracy: float
    final_loss: float
    epsilon_max: float | None
    epsilons: dict[str, float]
    seconds: float
    arrays: ArrayRecord  # the released model (the EMA of the iterates when ema-decay > 0)
    history: list[dict] = field(default_factory=list)


def run_federation(*, grid: Grid, settings: ServerSettings, strategy: DpFedAvg, roster: Roster,
                   evaluate: Evaluator, rundir: RunDirectory, initial_arrays: ArrayRecord, delta: float,
                   reporter: Reporter, start_round: int = 1, early_stopping: EarlyStopping | None = None,
                   validate: Evaluator | None = None) -> FederationResult:
    """Run rounds ``start_round``..num-server-rounds, or until a stop. ``early_stopping`` with ``validate`` (the
    server's validation split, server/early_stopping.py): stop once it stops improving; release its best model."""
    total = settings.num_rounds
    dp = settings.policy.dp
    arrays = initial_arrays  # the training iterate: what clients start from
    released = initial_arrays  # what is evaluated and saved: the iterate, or its EMA over rounds
    t_run = time.perf_counter()
    history = rundir.read_metrics() if start_round > 1 else []
    if early_stopping is not None:
        early_stopping.restore(history)
    if start_round == 1:
        loss0, acc0 = evaluate(arrays)
        log.info("round   0/%d | accuracy %.4f | loss %.4f (initial model)", total, acc0, loss0)
    reporter.start(total)
    rounds_done = start_round - 1
    _wait_for_nodes(grid, settings.min_train_clients, settings.round_timeout)
    run_path = str(rundir.path)

    def terms_of_new_nodes(server_round: int) -> list[dict]:
        unknown = [n for n in grid.get_node_ids() if not roster.known(n)]
        return ask_terms(grid, unknown, roster, delta=delta, run_path=run_path, timeout=settings.round_timeout,
                         server_round=server_round)

    pending_events = terms_of_new_nodes(start_round)
    declined = [st for st in roster.clients.values() if st.status in REFUSALS]
    accepted = [st for st in roster.clients.values() if st.terms is not None]
    if len(accepted) < settings.min_train_clients:
        reasons = "; ".join(st.reason for st in declined[:3]) + (" ..." if len(declined) > 3 else "")
        strategy.stop_reason = (
            f"before round {start_round}: {len(accepted)} client(s) accepted this run's privacy terms and "
            f"{len(declined)} declined (min-train-clients is {settings.min_train_clients}); nothing was trained"
            + (f". Declines: {reasons}" if declined else ""))
    last_round = total if len(accepted) >= settings.min_train_clients else start_round - 1  # none runs
    try:
        for server_round in range(start_round, last_round + 1):
            t0 = time.perf_counter()
            if server_round > start_round:
                pending_events += terms_of_new_nodes(server_round)
            train_cfg = ConfigRecord(wire.train_config(server_round, delta, str(rundir.path)))
            messages = list(strategy.configure_train(server_round, arrays, train_cfg, grid))
            user_level = strategy.user_level
            if not messages and (user_level is None or strategy.stop_reason):
                break  # (a user-level round with an empty Poisson cohort still releases its noise)
            sent_to = {m.metadata.dst_node_id for m in messages}
            replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout)) if messages else []
            answered = {source_node(r) for r in replies} & sent_to
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
            events = [*pending_events, *strategy.round_events]
            pending_events = []
            for node in sorted(sent_to - answered):
                cid = roster.record_drop(node, server_round, f"no reply within {settings.round_timeout} s")
                events.append({"client": cid, "event": "dropped", "reason": "no reply within the round timeout"})
            participants = strategy.accepted  # replies that passed server/reply_checks.py and were averaged
            if user_level is None and participants < settings.min_train_clients:
                strategy.stop_reason = (
                    f"round {server_round}: only {participants} client(s) returned a valid update "
                    f"(min-train-clients is {settings.min_train_clients}); the round is not counted and the "
                    f"model is the one after round {server_round - 1}")
                break
            if new_arrays is not None:
                arrays = new_arrays
                released = strategy.post_processing.release(arrays)
            if settings.fraction_evaluate > 0:
                _client_side_evaluation(strategy, grid, server_round, released, settings.round_timeout)
            loss, acc = evaluate(released)
            validation = validate(released)[1] if validate is not None else None
            row = {
                "round": server_round, "accuracy": acc, "loss": loss,
                **({"validation_accuracy": validation} if validation is not None else {}),
                "epsilon_max": roster.epsilon_max() if dp else None,
                "epsilon": roster.epsilons() if dp else {},
                "delta": delta, "participants": participants,
                "seconds": time.perf_counter() - t0, "events": events,
            }
            if user_level is not None:  # the cohort is not published: who took part, or how many
                for event in events:
                    log.debug("round %d (not published: user-level DP): %s", server_round, event)
                row.update({"participants": None, "events": [], "expected_cohort": user_level.settings.expected_cohort,
                            "user_epsilon": user_level.epsilon, "user_delta": user_level.settings.delta,
                            "clip_norm": user_level.clip_norm})
            if settings.policy.not_private:
                row["privacy"] = NOT_PRIVATE_STAMP
            if not math.isfinite(loss):
                row["loss"] = None
            stop_early = early_stopping.observe(server_round, validation, released) if (
                early_stopping is not None and validation is not None) else ""
            rundir.append_metrics(row)
            rundir.save_checkpoint(server_round, arrays.to_torch_state_dict(), strategy.post_processing.tensors(),
                                   checkpoint_state(roster, strategy))
            history.append(row)
            rounds_done = server_round
            reporter.round({**row, "loss": loss})
            if stop_early:
                strategy.stop_reason = stop_early
                break
    finally:
        reporter.stop()
    stop_reason = strategy.stop_reason
    if rounds_done < total and not stop_reason:
        stop_reason = "interrupted"
    last = history[-1] if history else {"accuracy": float("nan"), "loss": float("nan")}
    if early_stopping is not None and early_stopping.best_arrays is not None:  # release the best by validation
        released = early_stopping.best_arrays
        last = next((r for r in history if r["round"] == early_stopping.best_round), last)
    return FederationResult(
        rounds_completed=rounds_done, stop_reason=stop_reason, final_accuracy=float(last["accuracy"]),
        final_loss=float(last["loss"]) if last.get("loss") is not None else float("nan"),
        epsilon_max=roster.epsilon_max() if dp else None, epsilons=roster.epsilons(),
        seconds=time.perf_counter() - t_run, arrays=released, history=history)


def _wait_for_nodes(grid: Grid, needed: int, timeout: float) -> None:
    """Give nodes a bounded time to register before round 1 (a Ray/SuperLink federation starts empty);
    never an unbounded wait: after ``timeout`` round 1 runs with whoever is there, or stops cleanly."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < needed and time.monotonic() < deadline:
        time.sleep(0.5)


def _client_side_evaluation(strategy: DpFedAvg, grid: Grid, server_round: int, arrays: ArrayRecord,
                            timeout: float) -> None:
    """Flower's client-side evaluate round (off by default: it uses clients' private data)."""
    messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
    if messages:
        replies = grid.send_and_receive(messages, timeout=timeout)
        metrics = strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            log.info("round %d client-side evaluation (NOT DP, private data): %s", server_round, dict(metrics))

