"""The server's own record of every client: its terms, the releases charged to it, participations, status.

The server never relies on the epsilon a client reports: it keeps each client's releases in a ledger of
its own (under a stable client id, because Flower's node_id changes when a node re-registers) and computes
epsilon from it with the same accountant. It charges a client when it sends the instruction, at the
release the client's terms announced, before any reply: a late or lost reply is still charged, so the
server's epsilon is never below what the client actually spent in this run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpfl.privacy import DpSgdRelease, Ledger, check_budget, epsilon, release_from_dict
from dpfl.privacy.wire import (
    CLIENT_ID_PATTERN,
    NO_MECHANISM,
    NOISE_MULTIPLIER,
    RESERVED_CLIENT_ID,
    SAMPLE_RATE,
    STEPS,
    ClientTerms,
    WireError,
)

log = logging.getLogger("dpfl.server")

POLICY_DECLINED = "declined (policy)"  # the owner's policy forbids this run; nothing trained
LEDGER_REFUSED = "refused (ledger conflict)"  # the client's ledger copies disagree; it will not train
REFUSALS = (POLICY_DECLINED, LEDGER_REFUSED)  # clients that stated they will not take part


@dataclass
class ClientStatus:
    client_id: str
    participations: int = 0
    status: str = "active"  # active | exhausted | max-participations | dropped | one of REFUSALS
    reason: str = ""
    epsilon: float = 0.0
    last_release: DpSgdRelease | None = None
    events: list[dict] = field(default_factory=list)  # declines and drops, with rounds
    terms: ClientTerms | None = None
    terms_base: int = 0  # participations when the terms were stated: terms.max_rounds counts rounds after it


class Roster:
    def __init__(self, *, ledger_dir: Path | None, delta: float, accountant: str, max_participations: int,
                 budget: float, neighbouring: str = "add-remove", run: str = "",
                 entry_fields: dict[str, object] | None = None) -> None:
        self.ledger_dir = ledger_dir
        self.delta = delta
        self.accountant = accountant
        self.max_participations = max_participations
        self.budget = budget
        self.neighbouring = neighbouring
        self.run = run
        self.entry_fields = dict(entry_fields or {})  # e.g. the NOT PRIVATE stamp, on every ledger line
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
        """Tie a client id to the node that first claimed it. A node cannot take over an id another node
        holds, nor change its own: identity comes from the node, never from a later string in a reply."""
        holder = self.holder(client_id)
        if holder is not None and holder != node_id:
            raise WireError(f"client id {client_id!r} is already held by node {holder}; node {node_id} "
                            "cannot claim it")
        bound = self.node_to_client.get(node_id)
        if bound is not None and bound != client_id:
            raise WireError(f"node {node_id} is {bound!r} in this run and cannot rename itself {client_id!r}")
        self.node_to_client[node_id] = client_id
        return self.client(client_id)

    def _named_by_node(self, node_id: int, claimed: str | None) -> str:
        """The id a decline is booked under: the node's bound id, else the claimed one unless another node
        holds it, else ``node-<id>``. A decline's reason text cannot decline for another client."""
        bound = self.node_to_client.get(node_id)
        if bound is not None:
            return bound
        if claimed and CLIENT_ID_PATTERN.fullmatch(claimed) and claimed != RESERVED_CLIENT_ID \
                and self.holder(claimed) in (None, node_id):
            return claimed  # only a well-formed id: it names a ledger file
        return f"node-{node_id}"

    def holder(self, client_id: str) -> int | None:
        """The node bound to this client id, if any."""
        return next((n for n, c in self.node_to_client.items() if c == client_id), None)

    def known(self, node_id: int) -> bool:
        """Has this node stated its terms (or declined)? Unknown nodes are asked before they may train."""
        client_id = self.node_to_client.get(node_id)
        return client_id is not None and (self.clients[client_id].terms is not None
                                          or self.clients[client_id].status in REFUSALS)

    # -- terms --------------------------------------------------------------------------------
    def record_terms(self, node_id: int, terms: ClientTerms) -> ClientStatus:
        if terms.neighbouring != self.neighbouring:
            raise WireError(f"terms reply: neighbouring={terms.neighbouring!r} but this run accounts "
                            f"{self.neighbouring!r}")
        st = self.bind(node_id, terms.client_id)
        st.terms, st.terms_base = terms, st.participations
        if st.status in REFUSALS:
            st.status, st.reason = "active", ""
        return st

    def record_policy_decline(self, node_id: int, client_id: str | None, server_round: int, reason: str, *,
                              status: str = POLICY_DECLINED) -> str:
        """A refusal to take part: the owner's policy declined (``POLICY_DECLINED``) or the client's own
        ledger copies disagree (``LEDGER_REFUSED``). A node already bound keeps its identity: its reason text
        cannot decline for another client (before terms, the text is all there is to name it by)."""
        if status not in REFUSALS:
            raise ValueError(f"status {status!r} is not one of {REFUSALS}")
        client_id = self._named_by_node(node_id, client_id)
        st = self.bind(node_id, client_id)
        st.status, st.reason = status, reason
        st.events.append({"round": server_round, "event": status, "reason": reason})
        return client_id

    # -- eligibility --------------------------------------------------------------------------
    def eligible(self, node_id: int) -> bool:
        """May this node be sampled? Only once it has stated terms, within them and within the budget."""
        client_id = self.node_to_client.get(node_id)
        if client_id is None:
            return False
        st = self.clients[client_id]
        if st.terms is None or st.status in ("exhausted", "max-participations", *REFUSALS):
            return False
        if st.participations >= self.max_participations:
            st.status, st.reason = "max-participations", f"took part in {st.participations} rounds (the maximum)"
            return False
        if st.participations - st.terms_base >= st.terms.max_rounds:
            st.status, st.reason = "exhausted", (f"its terms allow {st.terms.max_rounds} more round(s) in this run "
                                                 "(its own budget)")
            return False
        release = st.terms.release
        if self.budget > 0 and release is not None:
            verdict = check_budget(self.ledgers[client_id].releases, release, self.delta, self.budget,
                                   self.accountant, neighbouring=self.neighbouring)
            if not verdict.allowed:
                st.status, st.reason = "exhausted", verdict.reason
                return False
        return True

    # -- events -------------------------------------------------------------------------------
    def charge(self, node_id: int, server_round: int) -> DpSgdRelease | None:
        """Charge the client on ``node_id`` for this round's release, durably, before the instruction is
        sent; returns the release charged (None: dp = false, nothing to account).

        All or nothing: epsilon is computed and the ledger line written before any in-memory state changes,
        so a failure (a full disk, an accountant error) leaves the client exactly as it was, unsent."""
        client_id = self.node_to_client[node_id]
        st = self.clients[client_id]
        assert st.terms is not None, "only clients with terms are sampled"
        release = None if st.terms.release is None else replace(st.terms.release, round=server_round)
        eps = st.epsilon
        if release is not None and (booked := self._booked_before_interruption(client_id, release)) is not None:
            eps = booked  # this very charge is on the ledger already: a resumed run re-runs its round
        elif release is not None:
            ledger = self.ledgers[client_id]
            eps = epsilon([*ledger.releases, release], self.delta, self.accountant, neighbouring=self.neighbouring)
            ledger.append(release, delta=self.delta, accountant=self.accountant, epsilon=eps, client=client_id,
                          run=self.run, neighbouring=self.neighbouring, declared_records=st.terms.declared_records,
                          charged="at-send", **self.entry_fields)
        st.participations += 1
        if st.status == "dropped":
            st.status = "active"
        if release is not None:
            st.epsilon, st.last_release = eps, release
        return release

    def _booked_before_interruption(self, client_id: str, release: DpSgdRelease) -> float | None:
        """The epsilon of a charge for exactly this release (round, sigma, q, steps) of this run that is already
        the last line of the client's ledger: booked just before the run was killed, so the resumed run reuses
        it instead of charging the same round twice. Any other line is no match: that charge is booked."""
        entries = self.ledgers[client_id].entries
        if not entries:
            return None
        last = entries[-1]
        same = (last.get("run") == self.run and release_from_dict(last) == release
                and last.get("delta") == self.delta and last.get("accountant") == self.accountant)
        if same:
            log.info("%s: round %d was charged before the interruption; that charge stands and is not booked "
                     "again", client_id, release.round)
        return float(last["epsilon"]) if same else None

    def check_reply(self, node_id: int, client_id: str, release: DpSgdRelease | None) -> None:
        """A reply must come from the client charged and describe the release charged; WireError if not
        (the update is then discarded; the charge stands). The identity is the node's, bound when its terms
        were received: a reply naming another client is refused, never booked on that client's ledger."""
        expected = self.node_to_client.get(node_id)
        if expected is None or client_id != expected:
            raise WireError(f"train reply: client-id={client_id!r} but node {node_id} stated terms as {expected!r}")
        charged = self.clients[client_id].last_release
        if release is None and charged is not None:
            raise WireError(f"train reply: mechanism={NO_MECHANISM!r} but {client_id} was charged a "
                            f"{charged.mechanism} release this round")
        if release is not None and charged is None:
            raise WireError(f"train reply: mechanism={release.mechanism!r} but {client_id} trains without DP "
                            "in this run (its terms announced no release)")
        if release is None or charged is None:
            return
        for key, got, want in ((NOISE_MULTIPLIER, release.noise_multiplier, charged.noise_multiplier),
                               (SAMPLE_RATE, release.sample_rate, charged.sample_rate)):
            if not math.isclose(got, want, rel_tol=1e-12):
                raise WireError(f"train reply: {key}={got!r} but {client_id} was charged {key}={want!r}")
        if release.steps != charged.steps:
            raise WireError(f"train reply: {STEPS}={release.steps!r} but {client_id} was charged "
                            f"{STEPS}={charged.steps!r}")

    def aggregation_weight(self, node_id: int, mode: str) -> float:
        """What the server itself knows to weigh this client by: its declared records from its terms
        (``mode`` "declared") or 1 ("uniform"); never a number a reply states."""
        st = self.clients[self.node_to_client[node_id]]
        if mode == "uniform" or st.terms is None:
            return 1.0
        return float(st.terms.declared_records)

    def record_decline(self, node_id: int, client_id: str | None, server_round: int, reason: str) -> str:
        """A budget decline. A node bound to a client keeps that identity whatever its reason text names."""
        client_id = self._named_by_node(node_id, client_id)
        st = self.bind(node_id, client_id)
        st.status, st.reason = "exhausted", reason
        st.events.append({"round": server_round, "event": "declined (budget)", "reason": reason})
        return client_id

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
                      "last_release": st.last_release.to_dict() if st.last_release else None,
                      "terms": _terms_state(st.terms),
                      "prior_epsilon": st.terms.prior_epsilon if st.terms else 0.0,
                      "prior_runs": list(st.terms.prior_runs) if st.terms else []}
                for cid, st in self.clients.items()
            },
        }

    def restore(self, state: dict) -> None:
        """Resume from a checkpoint: each client's participations, status and events. Its epsilon comes from
        its ledger, re-read from disk (which may hold the interrupted round's charge). Node ids are not
        restored: nodes register anew after a restart and state their terms again (then the participations
        so far are the base their new terms count from)."""
        for cid, d in state.get("clients", {}).items():
            st = self.client(cid)
            st.participations, st.reason = int(d["participations"]), str(d["reason"])
            st.status = d["status"] if d["status"] in ("exhausted", "max-participations") else "active"
            st.events = list(d["events"])
            st.last_release = release_from_dict(d["last_release"]) if d.get("last_release") else None
            entries = self.ledgers[cid].entries
            st.epsilon = float(entries[-1]["epsilon"]) if entries else float(d["epsilon"])


def _terms_state(terms: ClientTerms | None) -> dict | None:
    if terms is None:
        return None
    return {"release": terms.release.to_dict() if terms.release else None, "neighbouring": terms.neighbouring,
            "declared_records": terms.declared_records, "max_rounds": terms.max_rounds,
            "prior_epsilon": terms.prior_epsilon, "prior_runs": list(terms.prior_runs)}

