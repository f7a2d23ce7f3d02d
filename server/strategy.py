"""DP-aware FedAvg on Flower's Message API.

Differences from stock ``FedAvg``, each for a reason:
- sampling draws only from clients that may still train (budget, participation cap), from a
  seeded RNG, and never waits in a loop for nodes that are gone (stock ``sample_nodes`` does);
- error replies are expected: a budget decline marks the client exhausted, a policy decline excludes it,
  any other error, a malformed reply or a missing reply is a drop; none stops the round;
- the server charges each sampled client in its own ledger before the instruction is sent, at the release
  the client's terms announced (server/terms.py); a client whose charge fails is not sent anything;
- nothing a reply says about itself is believed (server/reply_checks.py): its arrays must be the sent
  model's keys, shapes and dtypes, finite and within the honest update bound; its metrics and release record
  exactly the wire schema; its identity is the node's bound client, its release the one charged, its weight
  the one the server knows (declared records or 1), never its ``num-examples``. A bad reply is dropped with
  its reason in the round's events, and the round goes on with the others;
- only a node's first reply in a round is considered: a later one is rejected (events only, no booking);
- the average is our own: float64 accumulation in node order, so it does not depend on arrival order;
- the averaged model goes through the post-processing seam (server/averaging.py: server optimizer, EMA);
  the federation's epsilon is a max, not a mean.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from dpfl.privacy import wire
from dpfl.server import reply_checks
from dpfl.server.audit_observer import ReleaseObserver
from dpfl.server.averaging import PostProcessing
from dpfl.server.canary_clients import CanaryClients
from dpfl.server.reply_checks import Rejected, SentModel, UpdateBound, clip_text
from dpfl.server.roster import Roster
from dpfl.server.user_level import UserLevelMechanism

log = logging.getLogger("dpfl.server")
WEIGHT_MODES = ("declared", "uniform")
CLIP_SLACK = 1e-4  # user-level: a clipped float32 update may exceed C by rounding; anything longer is refused


class DpFedAvg(FedAvg):
    def __init__(self, *, roster: Roster, num_clients: int, fraction_train: float, min_train_clients: int,
                 fraction_evaluate: float, post_processing: PostProcessing, seed: int,
                 aggregation_weights: str | None = None, update_bound: UpdateBound | None = None,
                 user_level: UserLevelMechanism | None = None, observer: ReleaseObserver | None = None,
                 canary_clients: CanaryClients | None = None) -> None:
        """``aggregation_weights``: the run's aggregation-weights ("declared" | "uniform"). None (the composition
        root did not say): a reply's num-examples must be one of the two values the server knows for that
        client (its declared records, or 1), and that one is used: a client can lower its own weight, never
        raise it above its declared records. ``update_bound``: the honest update bound from the training
        settings (``UpdateBound.from_run_config``); None: the fallback bound of server/reply_checks.py.
        ``user_level``: privacy-unit = client (server/user_level.py): Poisson cohorts, updates within the clip
        norm, the noised sum over the expected cohort; rounds run whoever replies (an empty cohort releases
        noise only), and weights are not used. ``observer``: an audit's white-box view of every release
        (server/audit_observer.py); ``canary_clients``: a user-level audit's crafted clients
        (server/canary_clients.py)."""
        super().__init__(fraction_train=fraction_train, fraction_evaluate=max(fraction_evaluate, 1e-9),
                         min_train_nodes=min_train_clients, min_evaluate_nodes=0 if fraction_evaluate == 0 else 1,
                         min_available_nodes=min_train_clients, weighted_by_key=wire.NUM_EXAMPLES,
                         arrayrecord_key=wire.ARRAYS, configrecord_key=wire.CONFIG)
        if aggregation_weights is not None and aggregation_weights not in WEIGHT_MODES:
            raise ValueError(f"aggregation_weights={aggregation_weights!r}: expected one of {WEIGHT_MODES}")
        self.fraction_evaluate = fraction_evaluate  # 0 (the default) is deliberate: no warning for it
        self.roster = roster
        self.num_clients = num_clients
        self.post_processing = post_processing
        self.rng = random.Random(seed)
        self.aggregation_weights = aggregation_weights
        self.update_bound = update_bound or UpdateBound()
        self.user_level = user_level
        self.observer = observer
        self.canary_clients = canary_clients
        self._within_clip: dict[int, bool] = {}
        self.stop_reason = ""
        self._sent_arrays: ArrayRecord | None = None
        self._sent_model: SentModel | None = None
        self._sent_to: set[int] = set()
        self.round_events: list[dict] = []
        self._send_events: list[dict] = []
        self.accepted = 0  # replies averaged in the last aggregate_train
        self.rejected = 0  # replies refused in the last aggregate_train (bad, duplicate, unsolicited)
        self.rejected_total = 0

    def summary(self) -> None:  # stock summary logs at INFO through Flower's logger; ours is the run header
        return None

    def sample_size(self) -> int:
        return max(math.ceil(self.fraction_train * self.num_clients), self.min_train_nodes)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        eligible = [n for n in nodes if self.roster.eligible(n)]
        self._send_events = []
        if len(eligible) < self.min_train_nodes:
            self.stop_reason = (
                f"round {server_round}: only {len(eligible)} of {len(nodes)} connected clients may still train "
                f"(min-train-clients is {self.min_train_nodes}); the others are out of budget, at their "
                "participation cap or gone")
            return []
        # sampled in client-id order, not node-id order: node ids change when nodes re-register (a restart,
        # a resumed run), client ids do not, so the same RNG state picks the same clients
        eligible.sort(key=lambda n: self.roster.node_to_client[n])
        if self.user_level is not None:
            self.stop_reason = self.user_level.over_budget(server_round)
            if self.stop_reason:
                return []
            chosen = self.user_level.sample(eligible)  # Poisson, from the secure generator
            config[wire.CFG_USER_CLIP] = self.user_level.clip_norm
        else:
            chosen = self.rng.sample(eligible, min(self.sample_size(), len(eligible)))
        self._sent_arrays = arrays
        self._sent_model = SentModel.of(arrays)
        charged: list[int] = []
        # user-level: every eligible client is charged its record-level release, sampled or not, so the server's
        # per-client ledgers (and the epsilon per client in metrics) do not tell who was in the cohort
        to_charge = eligible if self.user_level is not None else chosen
        for node in to_charge:  # charged before the instruction leaves: a lost or late reply is still paid for
            try:
                self.roster.charge(node, server_round)
            except Exception as exc:  # noqa: BLE001 - charge is all-or-nothing: this client is simply not sent
                reason = f"could not be charged, not sent this round: {type(exc).__name__}: {clip_text(exc)}"
                log.error("round %d: node %d %s", server_round, node, reason)
                cid = self.roster.node_to_client.get(node, f"node-{node}")
                self._send_events.append({"client": cid, "event": "failed", "reason": reason})
                continue
            charged.append(node)
        if self.user_level is not None:
            picked = set(chosen)
            charged = [n for n in charged if n in picked]
        self._sent_to = set(charged)
        if not charged and self.user_level is None:
            self.stop_reason = f"round {server_round}: no sampled client could be charged; nothing was sent"
            return []
        config[wire.CFG_ROUND] = server_round
        record = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in charged]

    # -- train replies ------------------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, book declines and drops, average the good ones with the server's weights.
        Never raises: whatever a reply holds, the worst outcome is that it is not used (the charge stands)."""
        self.round_events = list(self._send_events)  # charge failures at send
        self.accepted = self.rejected = 0
        try:
            replies = list(replies)
        except Exception as exc:  # noqa: BLE001 - a broken iterable of replies is an empty round
            self._reject(None, server_round, f"replies could not be read: {type(exc).__name__}: {clip_text(exc)}")
            replies = []
        judged: set[int] = set()
        good: list[tuple[int, float, list[np.ndarray]]] = []
        for msg in replies:
            node = source_node(msg)
            first = node is not None and node in self._sent_to and node not in judged
            try:
                self._judge(server_round, msg, judged, good)
            except Exception as exc:  # noqa: BLE001 - last line of defence: an unexpected failure is a rejection
                log.exception("round %d: reply from node %s could not be checked", server_round, node)
                reason = f"reply could not be checked: {type(exc).__name__}: {clip_text(exc)}"
                good[:] = [g for g in good if g[0] != node]
                try:
                    self._reject(node if first else None, server_round, reason, node=node)
                except Exception:  # noqa: BLE001 - even booking the drop failed: report it, never crash
                    self.round_events.append({"client": f"node-{node}", "event": "rejected", "reason": reason})
                if node is not None:
                    judged.add(node)
        self.accepted = len(good)
        if self._sent_model is None or (not good and self.user_level is None):
            return None, None
        try:
            good.sort(key=lambda g: g[0])
            if self.user_level is not None:
                averaged = self._user_level_mean(server_round, good)
            else:
                self._observe_clients(server_round, good)
                averaged = reply_checks.weighted_mean(self._sent_model, [(w, a) for _, w, a in good])
            arrays = self.post_processing.next_model(self._sent_arrays, averaged)
        except Exception as exc:  # noqa: BLE001 - the model stays the previous one; the charges stand
            log.exception("round %d: aggregation failed", server_round)
            self.round_events.append({"client": "server", "event": "failed",
                                      "reason": f"aggregation failed: {type(exc).__name__}: {clip_text(exc)}"})
            self.accepted = 0
            return None, None
        metrics = MetricRecord({"participants": len(good), "epsilon-max": self.roster.epsilon_max()})
        return arrays, metrics

    def _observe_clients(self, server_round: int, good: list[tuple[int, float, list[np.ndarray]]]) -> None:
        if self.observer is not None and self._sent_model is not None:
            for node, _, arrays in good:
                self.observer.observe(server_round, self.roster.node_to_client[node], self._sent_model.keys,
                                      self._sent_model.arrays, arrays)

    def _user_level_mean(self, server_round: int, good: list[tuple[int, float, list[np.ndarray]]]) -> ArrayRecord:
        """Book the round's user-level release, then the sent model plus the noised mean update."""
        assert self.user_level is not None and self._sent_model is not None
        self.user_level.charge(server_round)  # durable before the noised aggregate exists
        sent = self._sent_model
        floating = [i for i, base in enumerate(sent.arrays) if np.issubdtype(base.dtype, np.floating)]
        clip = self.user_level.clip_norm
        deltas = []
        for _, _, arrays in good:
            diff = [arrays[i].astype(np.float64) - sent.arrays[i].astype(np.float64) for i in floating]
            norm = float(np.sqrt(sum(float(np.square(d).sum()) for d in diff)))
            scale = min(1.0, clip / norm) if norm > 0 else 1.0  # float32 rounding can overshoot C by ~1e-7
            deltas.append([d * scale for d in diff])
        within = [self._within_clip.get(node, False) for node, _, _ in good]
        sparse = [] if self.canary_clients is None else self.canary_clients.contributions(
            self.user_level.sample, sent.keys, floating, clip)
        mean = self.user_level.noised_mean(deltas, within, [sent.arrays[i].shape for i in floating], sparse)
        out = {key: Array(np.array(base, copy=True)) for key, base in zip(sent.keys, sent.arrays, strict=True)}
        for j, i in enumerate(floating):
            base = sent.arrays[i]
            out[sent.keys[i]] = Array(np.asarray(base.astype(np.float64) + mean[j]).astype(base.dtype))
        if self.observer is not None:  # the release is the noised mean (float64), before any post-processing
            released = list(sent.arrays)
            for j, i in enumerate(floating):
                released[i] = sent.arrays[i].astype(np.float64) + mean[j]
            self.observer.observe(server_round, wire.RESERVED_CLIENT_ID, sent.keys, sent.arrays, released)
        return ArrayRecord(out)

    def _judge(self, server_round: int, msg: object, judged: set[int],
               good: list[tuple[int, float, list[np.ndarray]]]) -> None:
        """One reply: book it (decline, drop) or add (node, weight, arrays) to ``good``."""
        if not isinstance(msg, Message):
            self._reject(None, server_round, f"not a Flower Message: {type(msg).__name__}")
            return
        node = source_node(msg)
        if node is None or node not in self._sent_to:
            self._reject(None, server_round, f"reply from node {node}, which was sent no train instruction "
                         "this round", node=node)
            return
        if node in judged:
            problem = self._problem(server_round, node, msg)
            self._reject(None, server_round, f"a second reply from node {node} this round (only its first reply "
                         f"counts): {problem if isinstance(problem, str) else 'otherwise well-formed'}", node=node)
            return
        judged.add(node)
        client_id = self.roster.node_to_client[node]
        if msg.has_error():
            code = msg.error.code
            reason = clip_text(msg.error.reason or f"error code {code}")
            if code == wire.BUDGET_EXHAUSTED:
                self.roster.record_decline(node, client_id, server_round, reason)
                self.round_events.append({"client": client_id, "event": "declined", "reason": reason})
            elif code == wire.POLICY_DECLINED:
                self.roster.record_policy_decline(node, client_id, server_round, reason)
                self.round_events.append({"client": client_id, "event": "declined (policy)", "reason": reason})
            else:
                self.roster.record_drop(node, server_round, reason)
                self.round_events.append({"client": client_id, "event": "failed", "reason": reason})
            return
        problem = self._problem(server_round, node, msg)
        if isinstance(problem, str):
            self._reject(node, server_round, problem, node=node)
            return
        weight, arrays = problem
        good.append((node, weight, arrays))

    def _problem(self, server_round: int, node: int,
                 msg: Message) -> str | tuple[float, list[np.ndarray]]:
        """The reason a non-error reply is unusable, or its (server weight, checked arrays)."""
        if msg.has_error():
            return f"error reply, code {msg.error.code}: {clip_text(msg.error.reason or '')}"
        content = msg.content
        reason = reply_checks.check_train_records(content)
        if reason:
            return reason
        metrics, info = content[wire.METRICS], content[wire.RELEASE]
        reason = reply_checks.check_fields(metrics, info)
        if reason:
            return reason
        try:
            client_id, release = wire.release_from_wire(metrics, info, server_round)
            self.roster.check_reply(node, client_id, release)
        except wire.WireError as exc:
            return str(exc)
        assert self._sent_model is not None
        if self.user_level is not None:  # weights are not used; the update must be within the clip norm
            if wire.WITHIN_CLIP not in metrics:
                return f"train reply: metric {wire.WITHIN_CLIP!r} is missing (privacy-unit = client)"
            weight: float | str = 1.0
            bound = self.user_level.clip_norm * (1.0 + CLIP_SLACK)
            self._within_clip[node] = metrics[wire.WITHIN_CLIP] == 1
        else:
            weight = self._weight(node, metrics[wire.NUM_EXAMPLES])
            if isinstance(weight, str):
                return weight
            st = self.roster.clients[client_id]
            declared = st.terms.declared_records if st.terms else 1
            bound = self.update_bound.limit(self._sent_model, st.last_release, declared)
        try:
            arrays = reply_checks.decode_update(self._sent_model, content[wire.ARRAYS], bound)
        except Rejected as exc:
            return str(exc)
        return weight, arrays

    def _weight(self, node: int, claimed: float) -> float | str:
        """The server's weight for this client; a reply claiming another is rejected (the reason)."""
        cid = self.roster.node_to_client[node]
        if self.aggregation_weights is not None:
            weight = self.roster.aggregation_weight(node, self.aggregation_weights)
            if claimed != weight:
                return (f"train reply: {wire.NUM_EXAMPLES}={claimed!r} but the server weighs {cid} by "
                        f"{weight:g} (aggregation-weights = {self.aggregation_weights})")
            return weight
        known = {self.roster.aggregation_weight(node, mode) for mode in WEIGHT_MODES}
        if claimed not in known:
            return (f"train reply: {wire.NUM_EXAMPLES}={claimed!r} but the server weighs {cid} by one of "
                    f"{', '.join(f'{w:g}' for w in sorted(known))} (declared records or uniform)")
        return float(claimed)

    def _reject(self, book: int | None, server_round: int, reason: str, *, node: int | None = None) -> None:
        """Count and report a refused reply; ``book``: the node whose round it ends (booked as a drop)."""
        reason = f"reply rejected: {reason}"
        # a node's own reply is worth a warning; a flood of extra ones (second replies, strangers) is in the events
        log.log(logging.WARNING if book is not None else logging.DEBUG, "round %d: node %s: %s", server_round, node,
                reason)
        self.rejected += 1
        self.rejected_total += 1
        if book is not None:
            client_id = self.roster.record_drop(book, server_round, reason)
        else:
            client_id = self.roster.node_to_client.get(node, f"node-{node}") if node is not None else "unknown"
        self.round_events.append({"client": client_id, "event": "rejected", "reason": reason})

    # -- evaluate replies ---------------------------------------------------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Client-side evaluation metrics (logged only, NOT DP), weighted by each reply's num-examples; a
        malformed reply is skipped with a warning, never a crash."""
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        total = 0.0
        try:
            replies = list(replies)
        except Exception:  # noqa: BLE001
            return None
        for msg in replies:
            try:
                if not isinstance(msg, Message) or msg.has_error():
                    continue
                reason = reply_checks.check_evaluate_reply(msg.content)
                if reason:
                    log.warning("round %d: evaluate reply from node %s skipped: %s", server_round, source_node(msg),
                                reason)
                    continue
                metrics = msg.content[wire.METRICS]
                n = float(metrics[wire.NUM_EXAMPLES])
                for key, value in metrics.items():
                    if key != wire.NUM_EXAMPLES:
                        sums[key] = sums.get(key, 0.0) + n * float(value)
                        weights[key] = weights.get(key, 0.0) + n
                total += n
            except Exception as exc:  # noqa: BLE001
                log.warning("round %d: evaluate reply skipped: %s: %s", server_round, type(exc).__name__,
                            clip_text(exc))
        if total <= 0:
            return None
        return MetricRecord({**{k: v / weights[k] for k, v in sorted(sums.items())},
                             wire.NUM_EXAMPLES: int(total)})


def source_node(msg: object) -> int | None:
    """The sending node of a reply, or None when the object is not a well-formed Message."""
    try:
        node = msg.metadata.src_node_id  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None
    return node if isinstance(node, int) and not isinstance(node, bool) else None
