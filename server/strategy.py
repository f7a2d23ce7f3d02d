"""DP-aware FedAvg on Flower's Message API.

Differences from stock ``FedAvg``, each for a reason:
- sampling draws only from clients that may still train (budget, participation cap), from a
  seeded RNG, and never waits in a loop for nodes that are gone (stock ``sample_nodes`` does);
- error replies are expected: a budget decline marks the client exhausted, a policy decline excludes it,
  any other error, a malformed reply or a missing reply is a drop; none stops the round;
- the server charges each sampled client in its own ledger before the instruction is sent, at the release
  the client's terms announced (server/terms.py), and discards a reply that describes another release;
- the averaged model goes through the post-processing seam (server/averaging.py: server optimizer, EMA);
  the federation's epsilon is a max, not a mean.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from dpfl.privacy import wire
from dpfl.server.averaging import PostProcessing
from dpfl.server.roster import Roster

log = logging.getLogger("dpfl.server")


class DpFedAvg(FedAvg):
    def __init__(self, *, roster: Roster, num_clients: int, fraction_train: float, min_train_clients: int,
                 fraction_evaluate: float, post_processing: PostProcessing, seed: int) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=max(fraction_evaluate, 1e-9),
                         min_train_nodes=min_train_clients, min_evaluate_nodes=0 if fraction_evaluate == 0 else 1,
                         min_available_nodes=min_train_clients, weighted_by_key=wire.NUM_EXAMPLES,
                         arrayrecord_key=wire.ARRAYS, configrecord_key=wire.CONFIG)
        self.fraction_evaluate = fraction_evaluate  # 0 (the default) is deliberate: no warning for it
        self.roster = roster
        self.num_clients = num_clients
        self.post_processing = post_processing
        self.rng = random.Random(seed)
        self.stop_reason = ""
        self._sent_arrays: ArrayRecord | None = None
        self._sent_to: set[int] = set()
        self.round_events: list[dict] = []

    def summary(self) -> None:  # stock summary logs at INFO through Flower's logger; ours is the run header
        return None

    def sample_size(self) -> int:
        return max(math.ceil(self.fraction_train * self.num_clients), self.min_train_nodes)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        eligible = [n for n in nodes if self.roster.eligible(n)]
        if len(eligible) < self.min_train_nodes:
            self.stop_reason = (
                f"round {server_round}: only {len(eligible)} of {len(nodes)} connected clients may still train "
                f"(min-train-clients is {self.min_train_nodes}); the others are out of budget, at their "
                "participation cap or gone")
            return []
        chosen = self.rng.sample(eligible, min(self.sample_size(), len(eligible)))
        self._sent_to = set(chosen)
        for node in chosen:  # charged before the instruction leaves: a lost or late reply is still paid for
            self.roster.charge(node, server_round)
        config[wire.CFG_ROUND] = server_round
        self._sent_arrays = arrays
        record = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in chosen]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good: list[Message] = []
        self.round_events = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in self._sent_to:
                # e.g. the SuperLink answering for a node that stopped heartbeating: not a client's reply;
                # the round loop counts the silent node as dropped
                continue
            if msg.has_error():
                reason = msg.error.reason or f"error code {msg.error.code}"
                client_id = reason.split(":", 1)[0] if ":" in reason else None
                if msg.error.code == wire.BUDGET_EXHAUSTED:
                    self.roster.record_decline(node, client_id, server_round, reason)
                    self.round_events.append({"client": client_id, "event": "declined", "reason": reason})
                elif msg.error.code == wire.POLICY_DECLINED:
                    client_id = self.roster.record_policy_decline(node, client_id, server_round, reason)
                    self.round_events.append({"client": client_id, "event": "declined (policy)", "reason": reason})
                else:
                    client_id = self.roster.record_drop(node, server_round, reason)
                    self.round_events.append({"client": client_id, "event": "failed", "reason": reason})
                continue
            try:
                client_id, release = wire.release_from_wire(msg.content[wire.METRICS], msg.content[wire.RELEASE],
                                                            server_round)
                self.roster.check_reply(node, client_id, release)
            except (KeyError, wire.WireError) as exc:  # the charge stands; the update is not used
                reason = f"reply rejected: {exc}"
                log.warning("round %d: node %d: %s", server_round, node, reason)
                client_id = self.roster.record_drop(node, server_round, reason)
                self.round_events.append({"client": client_id, "event": "failed", "reason": reason})
                continue
            good.append(msg)
        if not good:
            return None, None
        averaged, _ = super().aggregate_train(server_round, good)
        if averaged is None:
            return None, None
        arrays = self.post_processing.next_model(self._sent_arrays, averaged)
        metrics = MetricRecord({"participants": len(good), "epsilon-max": self.roster.epsilon_max()})
        return arrays, metrics
