"""The server's own record of every client: releases, participations, status.

The server never relies on the epsilon a client reports: it keeps each client's releases in a
ledger of its own (under a stable client id from the node config, because Flower's node_id
changes when a node re-registers) and computes epsilon from it with the same accountant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from dpfl.privacy import DpSgdRelease, Ledger, check_budget, epsilon, release_from_dict

log = logging.getLogger("dpfl.server")


@dataclass
class ClientStatus:
    client_id: str
    participations: int = 0
    status: str = "active"  # active | exhausted | max-participations | dropped
    reason: str = ""
    epsilon: float = 0.0
    last_release: DpSgdRelease | None = None
    events: list[dict] = field(default_factory=list)  # declines and drops, with rounds


class Roster:
    def __init__(self, *, ledger_dir: Path | None, delta: float, accountant: str, max_participations: int,
                 budget: float) -> None:
        self.ledger_dir = ledger_dir
        self.delta = delta
        self.accountant = accountant
        self.max_participations = max_participations
        self.budget = budget
        self.clients: dict[str, ClientStatus] = {}
        self.ledgers: dict[str, Ledger] = {}
        self.node_to_client: dict[int, str] = {}

    # -- identity -----------------------------------------------------------------------------
    def client(self, client_id: str) -> ClientStatus:
        if client_id not in self.clients:
            self.clients[client_id] = ClientStatus(client_id)
            path = self.ledger_dir / f"{client_id}.jsonl" if self.ledger_dir else None
            self.ledgers[client_id] = Ledger.load(path) if path and path.exists() else Ledger(path)
        return self.clients[client_id]

    def bind(self, node_id: int, client_id: str) -> ClientStatus:
        self.node_to_client[node_id] = client_id
        return self.client(client_id)

    # -- eligibility --------------------------------------------------------------------------
    def eligible(self, node_id: int) -> bool:
        """May this node be sampled? Unknown nodes may: we learn their id from their first reply."""
        client_id = self.node_to_client.get(node_id)
        if client_id is None:
            return True
        st = self.clients[client_id]
        if st.status in ("exhausted", "max-participations"):
            return False
        if st.participations >= self.max_participations:
            st.status, st.reason = "max-participations", f"took part in {st.participations} rounds (the maximum)"
            return False
        if self.budget > 0 and st.last_release is not None:
            nxt = DpSgdRelease(st.last_release.noise_multiplier, st.last_release.sample_rate,
                               st.last_release.steps, round=st.last_release.round + 1)
            verdict = check_budget(self.ledgers[client_id].releases, nxt, self.delta, self.budget, self.accountant)
            if not verdict.allowed:
                st.status, st.reason = "exhausted", verdict.reason
                return False
        return True

    # -- events -------------------------------------------------------------------------------
    def record_release(self, node_id: int, client_id: str, release: DpSgdRelease | None) -> float:
        """Append a release the server received an update for; returns the client's cumulative epsilon."""
        st = self.bind(node_id, client_id)
        st.participations += 1
        if st.status == "dropped":
            st.status = "active"
        if release is None:  # DP off: nothing to account, and no guarantee
            return 0.0
        ledger = self.ledgers[client_id]
        eps = epsilon([*ledger.releases, release], self.delta, self.accountant)
        ledger.append(release, delta=self.delta, accountant=self.accountant, epsilon=eps, client=client_id)
        st.epsilon, st.last_release = eps, release
        return eps

    def record_decline(self, node_id: int, client_id: str | None, server_round: int, reason: str) -> None:
        client_id = client_id or self.node_to_client.get(node_id) or f"node-{node_id}"
        st = self.bind(node_id, client_id)
        st.status, st.reason = "exhausted", reason
        st.events.append({"round": server_round, "event": "declined (budget)", "reason": reason})

    def record_drop(self, node_id: int, server_round: int, reason: str) -> str:
        client_id = self.node_to_client.get(node_id, f"node-{node_id}")
        st = self.bind(node_id, client_id)
        if st.status == "active":
            st.status = "dropped"
        st.reason = reason
        st.events.append({"round": server_round, "event": "dropped", "reason": reason})
        return client_id

    # -- views --------------------------------------------------------------------------------
    def epsilons(self) -> dict[str, float]:
        return {cid: st.epsilon for cid, st in sorted(self.clients.items())}

    def epsilon_max(self) -> float:
        return max((st.epsilon for st in self.clients.values()), default=0.0)

    def state(self) -> dict:
        """JSON-able server state (ledgers live in their own files)."""
        return {
            "node_to_client": {str(k): v for k, v in self.node_to_client.items()},
            "clients": {
                cid: {"participations": st.participations, "status": st.status, "reason": st.reason,
                      "epsilon": st.epsilon, "events": st.events,
                      "last_release": st.last_release.to_dict() if st.last_release else None}
                for cid, st in self.clients.items()
            },
        }

    def restore(self, state: dict) -> None:
        """Resume from a checkpoint; the ledgers themselves are re-read from disk."""
        for cid, d in state.get("clients", {}).items():
            st = self.client(cid)
            st.participations, st.status, st.reason = d["participations"], d["status"], d["reason"]
            st.epsilon, st.events = d["epsilon"], list(d["events"])
            st.last_release = release_from_dict(d["last_release"]) if d.get("last_release") else None
        self.node_to_client = {int(k): v for k, v in state.get("node_to_client", {}).items()}
