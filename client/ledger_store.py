"""A client's own privacy ledger: kept in ``context.state`` and, when a state directory is set,
durably on disk.

In deployment every message runs in a fresh process and a SuperNode keeps ``context.state`` in
memory only, so the disk copy is the authority; the in-memory copy covers runs without a state
directory. The two must agree (one a prefix of the other): the longer one wins and is written
back, anything else is refused, because a ledger is never silently rolled back.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context

from dpfl.privacy import Ledger, LedgerError

STATE_KEY = "dpfl-ledger"


class LedgerConflictError(RuntimeError):
    """The on-disk ledger and the in-memory one disagree: training would risk losing releases."""


def ledger_path(state_dir: str, client_id: str) -> Path | None:
    return Path(state_dir) / f"{client_id}.jsonl" if state_dir else None


def load_ledger(context: Context, path: Path | None) -> Ledger:
    """The client's ledger, reconciled between context.state and disk (the longer copy wins)."""
    record = context.state.config_records.get(STATE_KEY)
    memory = Ledger.from_jsonl(str(record["jsonl"]) if record is not None else "", path=path)
    if path is None:
        return memory
    if path.exists():
        disk = Ledger.load(path)
        if len(disk) >= len(memory):
            if disk.entries[: len(memory)] != memory.entries:
                raise LedgerConflictError(f"ledger in memory is not a prefix of {path}; refusing to train")
            return disk
    if len(memory):
        # The disk copy is behind (deleted or never written): restore it. save() refuses to overwrite a
        # disk copy that is not a prefix of the one in memory.
        try:
            memory.save()
        except LedgerError as exc:
            raise LedgerConflictError(f"{exc}; refusing to train") from None
    return memory


def remember(context: Context, ledger: Ledger) -> None:
    """Mirror the ledger into context.state (after it is durable on disk)."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"jsonl": ledger.to_jsonl()})
