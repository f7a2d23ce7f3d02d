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

from privacy import Ledger

STATE_KEY = "dpfl-ledger"


class LedgerConflictError(RuntimeError):
    """The on-disk ledger and the in-memory one disagree: training would risk losing releases."""


def ledger_path(state_dir: str, client_id: str) -> Path | None:
    return Path(state_dir) / f"{client_id}.jsonl" if state_dir else None


def _is_prefix(short: list[dict], long: list[dict]) -> bool:
    return long[: len(short)] == short


def load_ledger(context: Context, path: Path | None) -> Ledger:
    """The client's ledger, reconciled between context.state and disk."""
    record = context.state.config_records.get(STATE_KEY)
    memory = Ledger.from_jsonl(str(record["jsonl"])) if record is not None else Ledger()
    disk = Ledger.load(path) if path is not None and path.exists() else Ledger()
    mem_entries, disk_entries = list(memory.entries), list(disk.entries)
    if len(disk_entries) >= len(mem_entries):
        if not _is_prefix(mem_entries, disk_entries):
            raise LedgerConflictError(f"ledger in memory is not a prefix of {path}; refusing to train")
        chosen_text = disk.to_jsonl()
    else:
        if not _is_prefix(disk_entries, mem_entries):
            raise LedgerConflictError(f"ledger at {path} is not a prefix of the one in memory; refusing to train")
        chosen_text = memory.to_jsonl()
    ledger = Ledger.from_jsonl(chosen_text, path=path)
    if path is not None and len(disk_entries) < len(mem_entries):
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger.save()  # the disk copy was behind (deleted or never written): restore it
    return ledger


def remember(context: Context, ledger: Ledger) -> None:
    """Mirror the ledger into context.state (after it is durable on disk)."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"jsonl": ledger.to_jsonl()})
