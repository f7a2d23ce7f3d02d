"""Continue a run killed at any moment from its last complete round, never booking a release twice.

A round ends with, in this order: its metrics row, then its checkpoint (model, server optimizer momentum,
EMA, sampling RNG, roster, and each client's server-ledger length and head). A kill can land anywhere, so on
resume the latest checkpoint whose two files are complete is the truth: its round R is the last complete
one, metrics rows after R are dropped (metrics are a view, not a ledger), and round R + 1 runs again.

The server's ledgers are never rolled back. Each must still hold what the checkpoint recorded (same length,
same head: it was neither truncated nor rewritten) and may be ahead by the charges of round R + 1, booked
before the kill; re-running round R + 1 reuses such a charge instead of booking it again (``Roster.charge``),
so the resumed run's ledgers hold the same rounds as an uninterrupted run's. Anything else, a checkpoint that
disagrees with the ledgers or with the run's config, is refused with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord

from dpfl.privacy.ledger import Ledger
from dpfl.privacy.ledger_chain import LedgerError, LedgerTamperedError
from dpfl.privacy.rundata import SERVER_LEDGER
from dpfl.server.averaging import PostProcessing
from dpfl.server.roster import Roster
from dpfl.server.rundir import Checkpoint, RunDirectory
from dpfl.server.strategy import DpFedAvg

log = logging.getLogger("dpfl.server")

# run-config keys that may differ between the interrupted run and its resumption: how it is run, not what
OPERATIONAL_KEYS = frozenset({"resume", "workers", "tracker", "round-timeout", "device", "state-dir", "data-dir"})
CHARGES_AHEAD = 1  # at most the charges of the one round that was running when the run was killed


class ResumeError(ValueError):
    """The run cannot be resumed as it is on disk; the message says why and what would fix it."""


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: its first round and the training iterate it starts from."""

    start_round: int
    arrays: ArrayRecord | None  # None: no round had completed; start from the initial model


def check_same_run(stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """ResumeError unless the stored run config and this one agree on everything but operational keys."""
    differs = sorted(k for k in set(stored) | set(current)
                     if k not in OPERATIONAL_KEYS and stored.get(k) != current.get(k))
    if differs:
        shown = ", ".join(f"{k} ({stored.get(k)!r} then, {current.get(k)!r} now)" for k in differs[:4])
        raise ResumeError(f"cannot resume: the run config differs from the interrupted run's config.json in "
                          f"{shown}{' ...' if len(differs) > 4 else ''}; resume with the same config "
                          "(`dpfl resume RUN_DIR` reads it from the run directory)")


def checkpoint_state(roster: Roster, strategy: DpFedAvg) -> dict[str, Any]:
    """What the checkpoint's JSON half records besides the round: roster, RNG, ledger lengths and heads."""
    version, internal, gauss = strategy.rng.getstate()
    heads = {cid: [len(ledger), ledger.head] for cid, ledger in sorted(roster.ledgers.items())}
    state: dict[str, Any] = {"roster": roster.state(), "rng": [version, list(internal), gauss], "ledger_heads": heads}
    if strategy.user_level is not None:  # ledgers/server.jsonl is checked on resume like every server ledger
        heads[SERVER_LEDGER] = [len(strategy.user_level.ledger), strategy.user_level.ledger.head]
        state["user_level"] = strategy.user_level.state()
    return state


def load_server_ledgers(rundir: RunDirectory) -> dict[str, Ledger]:
    """Every server ledger of the run, each verified (hash chain, fields) as it is read."""
    try:
        return {p.stem: Ledger.load(p) for p in sorted(rundir.ledgers.glob("*.jsonl"))}
    except LedgerError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None


def check_resumable(rundir: RunDirectory) -> Checkpoint | None:
    """The checkpoint a resume would continue from (None: before round 1), after checking that every server
    ledger agrees with it; ResumeError with the reason otherwise. Changes nothing on disk."""
    checkpoint = rundir.latest_checkpoint()
    ledgers = load_server_ledgers(rundir)
    last = checkpoint.round if checkpoint else 0
    heads = checkpoint.state.get("ledger_heads") if checkpoint else {}
    if not isinstance(heads, dict):
        raise ResumeError(f"cannot resume: {checkpoint.path.name if checkpoint else 'the checkpoint'} records "
                          "no ledger heads (written by an older dpfl); start a new run")
    for cid in sorted(set(heads) - set(ledgers)):
        if int(heads[cid][0]) > 0:
            raise ResumeError(f"cannot resume: the round-{last} checkpoint records {heads[cid][0]} entries for "
                              f"{cid}, but {rundir.ledgers / (cid + '.jsonl')} is gone: it was deleted")
    for cid, ledger in ledgers.items():
        count, head = (int(heads[cid][0]), str(heads[cid][1])) if cid in heads else (0, ledger.head_at(0))
        try:
            ledger.verify_against(count, head, ahead=CHARGES_AHEAD, recorded=f"the round-{last} checkpoint")
        except LedgerTamperedError as exc:
            raise ResumeError(f"cannot resume: the checkpoint and the ledgers disagree: {exc}") from None
        if any(int(e.get("round", -1)) != last + 1 for e in ledger.entries[count:]):
            raise ResumeError(f"cannot resume: {ledger.path} holds entries after round {last} that are not "
                              f"charges of round {last + 1}")
    return checkpoint


def resume(rundir: RunDirectory, roster: Roster, strategy: DpFedAvg, post: PostProcessing) -> Resumed:
    """Restore everything from the latest complete checkpoint (see the module docstring)."""
    checkpoint = check_resumable(rundir)
    if checkpoint is None:
        rundir.truncate_metrics(0)
        log.info("resuming before round 1: no round had completed; charges booked before the interruption "
                 "are reused, never booked twice")
        return Resumed(1, None)
    roster.restore(checkpoint.state["roster"])
    version, internal, gauss = checkpoint.state["rng"]
    strategy.rng.setstate((version, tuple(internal), gauss))
    post.restore(checkpoint.tensors)
    if strategy.user_level is not None:
        strategy.user_level.restore(checkpoint.state.get("user_level") or {})
    dropped = rundir.truncate_metrics(checkpoint.round)
    log.info("resuming after round %d from %s%s", checkpoint.round, checkpoint.path.name,
             f"; {dropped} metrics row(s) of the interrupted round dropped" if dropped else "")
    return Resumed(checkpoint.round + 1, ArrayRecord(checkpoint.model))
