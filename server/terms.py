"""Asking clients for their terms before they may train: what each will release, or its policy decline.

A client is only sampled once it has said, in a Flower query, which release one round makes (sigma,
sampling rate, steps), under which neighbouring relation and public record count, and how many rounds
its budget allows. The server charges it at exactly that release when it sends an instruction. A client
whose owner's policy forbids the run declines here, so nothing trains on its records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from dpfl.privacy import wire
from dpfl.server.roster import LEDGER_REFUSED, POLICY_DECLINED, Roster

log = logging.getLogger("dpfl.server")


def ask_terms(grid: Grid, nodes: Iterable[int], roster: Roster, *, delta: float, run_path: str,
              timeout: float, server_round: int) -> list[dict]:
    """Query each node for its terms and record the answer in the roster; returns the round's events
    (policy declines, failures). A node that does not answer is asked again next round."""
    nodes = sorted(nodes)
    if not nodes:
        return []
    config = ConfigRecord(wire.terms_request(delta, run_path, server_round))
    messages = [Message(content=RecordDict({wire.CONFIG: config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    events: list[dict] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if node not in nodes:
            continue
        if reply.has_error():
            reason = reply.error.reason or f"error code {reply.error.code}"
            client_id = reason.split(":", 1)[0] if ":" in reason else None
            if reply.error.code in (*wire.DECLINES, wire.LEDGER_CONFLICT):
                status = LEDGER_REFUSED if reply.error.code == wire.LEDGER_CONFLICT else POLICY_DECLINED
                cid = roster.record_policy_decline(node, client_id, server_round, reason, status=status)
                if status == LEDGER_REFUSED:
                    log.warning("node %d refused this run (ledger conflict): %s", node, reason)
                else:
                    log.warning("%s", reason)
                events.append({"client": cid, "event": status, "reason": reason})
            else:
                log.warning("node %d could not state its terms: %s", node, reason)
                events.append({"client": client_id or f"node-{node}", "event": "failed", "reason": reason})
            continue
        try:
            terms = wire.read_terms(reply.content[wire.TERMS])
            roster.record_terms(node, terms)
        except (KeyError, wire.WireError) as exc:
            log.warning("node %d sent malformed terms, it will not be sampled: %s", node, exc)
            events.append({"client": f"node-{node}", "event": "failed", "reason": f"malformed terms: {exc}"})
            continue
        release = terms.release
        described = ("no DP (dp = false)" if release is None else
                     f"sigma {release.noise_multiplier:.4g}, q {release.sample_rate:.4g}, {release.steps} steps")
        earlier = (f"; {len(terms.prior_runs)} earlier run(s) on these records, epsilon {terms.prior_epsilon:.3f}"
                   if terms.prior_runs else "")
        log.info("%s terms: %s per round, at most %d round(s), %s, N = %d%s", terms.client_id, described,
                 terms.max_rounds, terms.neighbouring, terms.declared_records, earlier)
    return events
